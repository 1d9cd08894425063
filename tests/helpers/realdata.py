"""Small real-format data sets written for tests: a RecordIO training set (written record by record
here, independently of fiqa.data.pack), an image folder, a list file, verification ``.bin`` files and
an XQLFW directory. Images are SynthFace renders, so a model can learn from them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fiqa.data.binpairs import save_bin
from fiqa.data.recordio import IRHeader, MXIndexedRecordIO, pack
from fiqa.data.synthface import SynthFace, SynthFacePairs

BIN_SETS = ("lfw", "agedb_30", "cfp_fp", "cfp_ff", "calfw", "cplfw")


def synth_images(num_identities: int, per_identity: int, seed: int = 0):
    """[(rgb uint8, label)] grouped by identity."""
    ds = SynthFace(num_identities, per_identity, seed=seed)
    return [(ds[i][0], ds[i][1]) for i in range(len(ds))]


def jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def write_rec(
    root: Path,
    samples,
    layout: str = "face2rec2",
    vector_labels: bool = True,
    corrupt_keys: tuple = (),
    payloads: dict | None = None,
) -> Path:
    """``root/train.rec`` + ``train.idx``.

    face2rec2: header record 0 first, images 1..N (label ``[label, 1.0]`` or scalar), identity records
    N+1..N+C. im2rec: keys 0..N-1, scalar labels, no header. ``corrupt_keys``: payloads that are not images;
    ``payloads``: ``{key: bytes}`` written instead of those keys' JPEGs (e.g. damaged ones)."""
    root.mkdir(parents=True, exist_ok=True)
    w = MXIndexedRecordIO(root / "train.idx", root / "train.rec", "w")
    labels = [lab for _, lab in samples]
    n, c = len(samples), max(labels) + 1
    if layout == "face2rec2":
        w.write_idx(0, pack(IRHeader(2, [n + 1, n + 1 + c], 0, 0), b""))
        first = 1
    else:
        first = 0
    for j, (img, lab) in enumerate(samples):
        key = first + j
        label = [float(lab), 1.0] if (vector_labels and layout == "face2rec2") else float(lab)
        payload = b"not an image" if key in corrupt_keys else (payloads or {}).get(key) or jpeg(img)
        w.write_idx(key, pack(IRHeader(0, label, key, 0), payload))
    if layout == "face2rec2":
        start = 1
        for k in range(c):
            count = labels.count(k)
            w.write_idx(n + 1 + k, pack(IRHeader(2, [start, start + count], n + 1 + k, 0), b""))
            start += count
    w.close()
    return root


def write_imagefolder(root: Path, samples, ext: str = ".jpg") -> Path:
    for j, (img, lab) in enumerate(samples):
        d = root / f"id_{lab:03d}"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{j:05d}{ext}"), np.ascontiguousarray(img[..., ::-1]))
    return root


def write_bin_sets(data_dir: Path, num_pairs: int = 40, names=BIN_SETS, seed: int = 3) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    pairs = SynthFacePairs(num_pairs=num_pairs, num_identities=30, seed=seed)
    images = np.stack([pairs[i][0] for i in range(len(pairs))])
    for name in names:
        save_bin(data_dir / f"{name}.bin", images, pairs.issame)
    return data_dir


def write_xqlfw(data_dir: Path, num_pairs: int = 40, seed: int = 5) -> Path:
    """``data_dir/xqlfw/{xqlfw_pairs.txt, xqlfw_aligned_112/<name>/<name>_<n:04d>.jpg}``; pairs alternate
    genuine (``name n1 n2``) and impostor (``name1 n1 name2 n2``)."""
    root = data_dir / "xqlfw"
    img_dir = root / "xqlfw_aligned_112"
    ds = SynthFace(num_identities=12, images_per_identity=6, seed=seed)
    for i in range(len(ds)):
        img, lab, _ = ds[i]
        name = f"Person_{lab:02d}"
        (img_dir / name).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(img_dir / name / f"{name}_{i % 6 + 1:04d}.jpg"), np.ascontiguousarray(img[..., ::-1]))
    rng = np.random.default_rng(seed)
    lines = [f"{num_pairs}"]  # header line (skipped by the protocol)
    for p in range(num_pairs):
        a = int(rng.integers(12))
        n1, n2 = rng.choice(np.arange(1, 7), 2, replace=False)
        if p % 2 == 0:
            lines.append(f"Person_{a:02d}\t{n1}\t{n2}")
        else:
            b = (a + int(rng.integers(1, 12))) % 12
            lines.append(f"Person_{a:02d}\t{n1}\tPerson_{b:02d}\t{n2}")
    (root / "xqlfw_pairs.txt").write_text("\n".join(lines) + "\n")
    return data_dir
