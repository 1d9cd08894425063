"""A tiny synthetic IJB release in insightface's layout (``IJB_release/IJBC/{loose_crop, meta}``), for tests.

Each image is an aligned 112x112 SynthFace render, tinted so that R, G and B differ, warped into a larger
loose crop by a random similarity transform; its 5 landmarks are that transform applied to the ArcFace
template, so aligning the crop must give back (about) the render. Templates: per subject one gallery
template (G1 for even subjects, G2 for odd; IJB-B: S1/S2) and two probe templates, each of 1-3 media of 1-3
images; one media id is shared by two templates (IJB media ids are not unique to a template). The meta files
list the images in shuffled order. Pairs: every (gallery, probe) template pair, genuine iff same subject.
The 1:N csv files have a header, one row per image (so templates repeat) and an extra FILENAME column.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fiqa.data.align import ARCFACE_DST
from fiqa.data.ijb import SETS
from fiqa.data.synthface import SynthFace

CROP = 160  # loose crop size


def _similarity(rng) -> np.ndarray:
    """A 2x3 similarity that puts the 112x112 face somewhere inside a CROP x CROP loose crop."""
    scale = rng.uniform(1.0, 1.25)
    angle = np.deg2rad(rng.uniform(-15, 15))
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    centre = rot @ np.array([56.0, 56.0])
    shift = np.array([CROP / 2, CROP / 2]) + rng.uniform(-6, 6, 2) - centre
    return np.hstack([rot, shift[:, None]])


def write_ijb(data_dir: Path, name: str = "ijbc", num_subjects: int = 5, seed: int = 0, one_to_n: bool = True):
    """Write ``<data_dir>/IJB_release/<IJBC|IJBB>``; return the ground truth (a dict of the meta as arrays,
    ``aligned``: the renders the reader should give back, ``subjects``: per image)."""
    folder, prefix, galleries = SETS[name]
    root = Path(data_dir) / "IJB_release" / folder
    (root / "loose_crop").mkdir(parents=True, exist_ok=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    faces = SynthFace(num_subjects, 12, seed=seed, max_level=0.0)  # clean renders

    rows = []  # (subject, template, media, role)
    templates, media_id, tid = [], 1000, 7
    for subj in range(num_subjects):
        for role in ("gallery", "probe", "probe"):
            tid += int(rng.integers(1, 9))  # sparse, increasing template ids
            templates.append((tid, subj, role))
            for _ in range(int(rng.integers(1, 4))):
                media_id += 1
                rows += [(subj, tid, media_id, role)] * int(rng.integers(1, 4))
    # one media id shared by two templates (as a still can be in several IJB templates)
    rows.append((rows[0][0], templates[1][0], rows[0][2], templates[1][2]))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]

    names, lmks, face_scores, aligned, used = [], [], [], [], {}
    for i, (subj, _, _, _) in enumerate(rows):
        k = used.get(subj, 0)
        used[subj] = k + 1
        img = faces[subj * 12 + k % 12][0].astype(np.float64)
        img = np.clip(img * np.array([1.0, 0.75, 0.5]) + np.array([20.0, 0.0, 40.0]), 0, 255).astype(np.uint8)
        m = _similarity(rng)
        crop = cv2.warpAffine(img, m, (CROP, CROP), flags=cv2.INTER_LINEAR, borderValue=(90, 90, 90))
        fname = f"img_{i:04d}.jpg"
        cv2.imwrite(str(root / "loose_crop" / fname), crop[..., ::-1].copy(), [cv2.IMWRITE_JPEG_QUALITY, 97])
        names.append(fname)
        lmks.append(ARCFACE_DST.astype(np.float64) @ m[:, :2].T + m[:, 2])
        face_scores.append(float(rng.uniform(0.5, 1.0)))
        aligned.append(img)

    with open(root / "meta" / f"{prefix}_name_5pts_score.txt", "w") as f:
        for n, lm, sc in zip(names, lmks, face_scores):
            f.write(n + " " + " ".join(f"{v:.4f}" for v in lm.ravel()) + f" {sc:.6f}\n")
    with open(root / "meta" / f"{prefix}_face_tid_mid.txt", "w") as f:
        for n, (_, t, m_id, _) in zip(names, rows):
            f.write(f"{n} {t} {m_id}\n")
    gallery = [(t, s) for t, s, r in templates if r == "gallery"]
    probes = [(t, s) for t, s, r in templates if r == "probe"]
    pairs = np.array([(g, p) for g, _ in gallery for p, _ in probes], np.int64)
    labels = np.array([int(gs == ps) for _, gs in gallery for _, ps in probes], np.int8)
    with open(root / "meta" / f"{prefix}_template_pair_label.txt", "w") as f:
        for (a, b), lab in zip(pairs, labels):
            f.write(f"{a} {b} {lab}\n")
    if one_to_n:
        by_split = {0: [], 1: []}
        for t, s in gallery:
            by_split[s % 2].append((t, s))
        for k, g in enumerate(galleries):
            _write_csv(root / "meta" / f"{prefix}_1N_gallery_{g}.csv", by_split[k], rows, names)
        _write_csv(root / "meta" / f"{prefix}_1N_probe_mixed.csv", probes, rows, names)

    return {
        "root": root,
        "names": names,
        "landmarks": np.stack(lmks),
        "faceness": np.array(face_scores),
        "template_ids": np.array([r[1] for r in rows], np.int64),
        "media_ids": np.array([r[2] for r in rows], np.int64),
        "subjects": np.array([r[0] for r in rows], np.int64),
        "aligned": np.stack(aligned),
        "pairs": pairs,
        "pair_labels": labels,
        "gallery": gallery,
        "probes": probes,
    }


def _write_csv(path: Path, templates, rows, names) -> None:
    with open(path, "w") as f:
        f.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
        for t, s in templates:
            for n, r in zip(names, rows):
                if r[1] == t:
                    f.write(f"{t},{s},loose_crop/{n}\n")
