"""Pack an image folder or a list file into an InsightFace/MXNet ``train.rec`` + ``train.idx``.

    python -m fiqa.data.pack INPUT OUT_DIR [--layout face2rec2|im2rec] [--reencode] [--quality 95]
                             [--image-size N] [--shuffle --seed S] [--list-root DIR] [--workers N]

``INPUT`` is an image folder (``<root>/<identity>/*.jpg``, labels = sorted identity names) or a list
file (``path;label``, ``path<TAB>label`` or ``path label`` per line). Two layouts (docs reference §1.4/§1.5):

* ``face2rec2`` (default; InsightFace MS1MV2/CASIA style, what arcface_torch's ``MXFaceDataset`` reads):
  images are keys ``1..N`` grouped by identity (stable sort by label), each ``IRHeader(2, [label, 1.0],
  key, 0)``; record ``0`` holds ``[N+1, N+1+C]`` and identity records ``N+1..N+C`` hold the half-open
  image range ``[first, last+1)`` of identity ``0..C-1``, both with empty payloads. Record 0 is written
  **first** (InsightFace's face2rec2 streams the list and appends it last): we know N and C before
  writing, the mxnet-written fixture in ``shared/fixtures`` has it first too, and a sequential reader then
  meets the header before any image. Readers find it by key either way. Labels must be ``0..C-1``
  without gaps (an identity record per label); a gap is an error that names the missing labels.
  N+1+C must stay below 2**24, the largest run of integers a float32 label holds exactly.
* ``im2rec`` (what WebFace42M uses): keys ``0..N-1`` in file order, optionally shuffled with a seed
  (as arcface_torch's ``shuffle_rec.py``), scalar labels (flag 0), no header or identity records.

The payload is the source file's bytes (no quality loss) unless ``--reencode`` (decode to RGB, JPEG at
``--quality``) or ``--image-size N`` (resize to NxN, then re-encode; implies ``--reencode``). Every image
is decoded once to check it unless ``--no-verify``. The output is written under temporary names and
renamed at the end, so a crash never leaves a partial ``train.rec``. ``pack_manifest.json`` records
the layout, counts, source and (for folders) the identity names.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from fiqa.data.folders import list_image_folder, read_file_list
from fiqa.data.images import decode_rgb
from fiqa.data.recordio import IRHeader, MXIndexedRecordIO, pack, pack_img

__all__ = ["LAYOUTS", "FLOAT32_EXACT_LIMIT", "check_label_range", "check_contiguous_labels", "pack_dataset", "main"]

LAYOUTS = ("face2rec2", "im2rec")
FLOAT32_EXACT_LIMIT = 2**24  # float32 represents every integer up to 2**24 exactly (docs reference §0.6)
MANIFEST = "pack_manifest.json"


# ------------------------------------------------------------------------------------------------ checks
def check_label_range(layout: str, num_images: int, num_classes: int) -> None:
    """Refuse a layout whose float32 labels would not be exact integers.

    face2rec2 stores ``N+1+C`` in record 0 (and ids up to it in the identity records), so it needs
    ``N + 1 + C < 2**24``; im2rec stores only the labels, so it needs ``C <= 2**24``."""
    if layout == "face2rec2" and num_images + 1 + num_classes >= FLOAT32_EXACT_LIMIT:
        raise ValueError(
            f"layout face2rec2 cannot hold {num_images} images and {num_classes} identities: its float32 "
            f"record ranges need N+1+C = {num_images + 1 + num_classes} < 2**24 = {FLOAT32_EXACT_LIMIT}; "
            f"use --layout im2rec (scalar labels, no header records; as WebFace42M is packed)"
        )
    if num_classes > FLOAT32_EXACT_LIMIT:
        raise ValueError(f"{num_classes} classes: float32 labels are exact only up to 2**24 = {FLOAT32_EXACT_LIMIT}")


def check_contiguous_labels(labels: np.ndarray, classes: Sequence[str] | None = None) -> int:
    """The number of classes C of labels that must cover ``0..C-1``; an error names the missing labels
    (and, for an image folder, the identity directories without images)."""
    present = np.unique(labels)
    num_classes = int(present[-1]) + 1
    if present.size == num_classes:
        return num_classes
    missing = np.setdiff1d(np.arange(num_classes), present)
    shown = ", ".join(f"{m} ({classes[m]!r})" if classes is not None else str(m) for m in missing[:20].tolist()) + (
        f", ... ({missing.size} in all)" if missing.size > 20 else ""
    )
    what = "identity folders without images" if classes is not None else "labels with no image"
    raise ValueError(
        f"layout face2rec2 needs labels 0..{num_classes - 1} without gaps (one identity record per label), "
        f"but {missing.size} are missing ({what}): {shown}; relabel the list contiguously, remove the empty "
        f"folders, or use --layout im2rec (which allows gaps)"
    )


# ------------------------------------------------------------------------------------------------ sources
def _collect(input: Path, list_root: str | None) -> tuple[list[str], np.ndarray, list[str] | None, dict]:
    if input.is_dir():
        if list_root is not None:
            raise ValueError(f"list_root applies to a list file, but input {str(input)!r} is an image folder")
        paths, labels, classes = list_image_folder(input)
        return paths, labels, classes, {"kind": "folder", "path": str(input.resolve())}
    if input.is_file():
        paths, labels = read_file_list(input, list_root)
        source = {"kind": "list", "path": str(input.resolve())}
        if list_root is not None:
            source["root"] = str(Path(list_root).resolve())
        return paths, labels, None, source
    raise FileNotFoundError(
        f"pack input not found: {str(input)!r} (an image folder <root>/<identity>/*.jpg or a list file)"
    )


def _record(task: tuple) -> bytes:
    """Read one image file and return its packed record (runs in a worker process when workers > 0)."""
    path, header, reencode, quality, image_size, verify = task
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path!r}") from None
    if not (reencode or verify):
        return pack(header, buf)
    img = decode_rgb(buf, f"image file {path!r}")
    if not reencode:
        return pack(header, buf)
    if image_size and img.shape[:2] != (image_size, image_size):
        import cv2

        shrink = img.shape[0] > image_size or img.shape[1] > image_size
        img = cv2.resize(img, (image_size, image_size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return pack_img(header, np.ascontiguousarray(img[:, :, ::-1]), quality=quality, img_fmt=".jpg")  # pack_img: BGR


def _records(tasks: Iterable[tuple], workers: int) -> Iterator[bytes]:
    if workers <= 0:
        yield from map(_record, tasks)
        return
    with get_context("spawn" if sys.platform == "darwin" else "fork").Pool(workers) as pool:
        yield from pool.imap(_record, tasks, chunksize=64)


# ------------------------------------------------------------------------------------------------- packing
def pack_dataset(
    input: str | os.PathLike,
    out_dir: str | os.PathLike,
    layout: str = "face2rec2",
    quality: int = 95,
    reencode: bool = False,
    image_size: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    list_root: str | os.PathLike | None = None,
    verify: bool = True,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Pack ``input`` (image folder or list file) into ``out_dir/train.rec`` + ``train.idx``; returns the
    summary (also written to ``out_dir/pack_manifest.json``). See the module docstring for the layouts."""
    if layout not in LAYOUTS:
        raise ValueError(f"pack.layout={layout!r} is not a layout; valid choices: {list(LAYOUTS)}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"pack.quality must be a JPEG quality in 1..100, got {quality}")
    if image_size is not None and int(image_size) < 1:
        raise ValueError(f"pack.image_size must be a positive number of pixels (or null), got {image_size}")
    if shuffle and layout != "im2rec":
        raise ValueError(
            "pack.shuffle applies to layout im2rec only: face2rec2 groups the images by identity (readers "
            "shuffle when loading)"
        )
    reencode = bool(reencode or image_size)
    input, out = Path(input), Path(out_dir)
    rec, idx = out / "train.rec", out / "train.idx"
    if not overwrite and (rec.exists() or idx.exists()):
        raise FileExistsError(f"{str(rec)!r} already exists; pass --overwrite (pack.overwrite=true) to replace it")
    paths, labels, classes, source = _collect(input, None if list_root is None else os.fspath(list_root))
    n = len(paths)
    if layout == "face2rec2":
        num_classes = check_contiguous_labels(labels, classes)
        order = np.argsort(labels, kind="stable")
        first_key = 1
    else:
        num_classes = len(classes) if classes is not None else int(labels.max()) + 1
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        first_key = 0
    check_label_range(layout, n, num_classes)

    def label_of(i: int):
        return [float(labels[i]), 1.0] if layout == "face2rec2" else float(labels[i])

    tasks = (  # lazily: one tuple per image would cost GBs at WebFace42M's size
        (paths[i], IRHeader(0, label_of(i), first_key + k, 0), reencode, int(quality), image_size, verify)
        for k, i in enumerate(map(int, order))
    )
    out.mkdir(parents=True, exist_ok=True)
    tmp_rec, tmp_idx = out / f".train.rec.{os.getpid()}.tmp", out / f".train.idx.{os.getpid()}.tmp"
    t0 = time.perf_counter()
    try:
        with MXIndexedRecordIO(tmp_idx, tmp_rec, "w") as writer:
            if layout == "face2rec2":
                writer.write_idx(0, pack(IRHeader(0, [n + 1, n + 1 + num_classes], 0, 0), b""))
            with _progress(progress, n, f"packing {source['kind']} -> {rec}") as advance:
                for k, record in enumerate(_records(tasks, workers)):
                    writer.write_idx(first_key + k, record)
                    advance()
            if layout == "face2rec2":
                sorted_labels = labels[order]
                starts = np.searchsorted(sorted_labels, np.arange(num_classes), side="left") + 1
                ends = np.searchsorted(sorted_labels, np.arange(num_classes), side="right") + 1
                for c in range(num_classes):
                    writer.write_idx(n + 1 + c, pack(IRHeader(0, [int(starts[c]), int(ends[c])], 0, 0), b""))
        _fsync(tmp_rec, tmp_idx)
        seconds = time.perf_counter() - t0
        if idx.exists():
            idx.unlink()  # a crash between the two renames leaves a .rec without .idx, never a mismatched pair
        os.replace(tmp_rec, rec)
        os.replace(tmp_idx, idx)
    finally:
        for p in (tmp_rec, tmp_idx):
            if p.exists():
                p.unlink()
    summary = {
        "layout": layout,
        "num_images": n,
        "num_classes": num_classes,
        "header0": [n + 1, n + 1 + num_classes] if layout == "face2rec2" else None,
        "keys": [first_key, first_key + n - 1],
        "source": source,
        "classes": classes,
        "reencode": reencode,
        "quality": int(quality) if reencode else None,
        "image_size": image_size,
        "shuffle": bool(shuffle),
        "seed": int(seed) if shuffle else None,
        "rec": str(rec),
        "idx": str(idx),
        "bytes": rec.stat().st_size,
        "seconds": round(seconds, 3),
        "images_per_s": round(n / seconds, 1) if seconds > 0 else None,
    }
    tmp_manifest = out / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp_manifest.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp_manifest, out / MANIFEST)
    return summary


def _fsync(*paths: Path) -> None:
    for p in paths:
        with open(p, "rb") as f:
            os.fsync(f.fileno())


class _progress:
    """A rich progress bar (a no-op when disabled); ``with _progress(...) as advance: advance()``."""

    def __init__(self, enabled: bool, total: int, description: str):
        self.enabled, self.total, self.description = enabled, total, description
        self._bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False
        )
        self._bar.start()
        task = self._bar.add_task(self.description, total=self.total)
        bar = self._bar
        return lambda: bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


# ------------------------------------------------------------------------------------------------------ CLI
def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"packed {s['rec']}", show_header=False)
    payload = "source file bytes"
    if s["reencode"]:
        payload = f"JPEG q{s['quality']}" + (f", {s['image_size']}x{s['image_size']}" if s["image_size"] else "")
    rows = [
        ("layout", s["layout"]),
        ("images", f"{s['num_images']:,}"),
        ("identities", f"{s['num_classes']:,}"),
        ("header record 0", str(s["header0"]) if s["header0"] else "none (im2rec)"),
        ("payload", payload),
        ("bytes", f"{s['bytes']:,} ({s['bytes'] / 2**20:.1f} MiB)"),
        ("seconds", f"{s['seconds']:.2f}"),
        ("images/s", f"{s['images_per_s']:,.0f}" if s["images_per_s"] else "-"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    Console().print(t)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fiqa.data.pack",
        description="Pack an image folder (<root>/<identity>/*.jpg) or a list file (path;label) into "
        "OUT_DIR/train.rec + train.idx (InsightFace/MXNet RecordIO).",
    )
    p.add_argument("input", help="image folder <root>/<identity>/*.jpg, or a list file of 'path;label' lines")
    p.add_argument("out_dir", help="output folder for train.rec, train.idx and pack_manifest.json")
    p.add_argument("--layout", choices=LAYOUTS, default="face2rec2", help="face2rec2 (MS1MV2 style, default) or im2rec")
    p.add_argument("--reencode", action="store_true", help="decode and re-encode as JPEG (default: source bytes)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for --reencode (default 95)")
    p.add_argument("--image-size", type=int, default=None, help="resize to NxN before re-encoding (implies --reencode)")
    p.add_argument("--shuffle", action="store_true", help="im2rec: shuffle the record order (seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed for --shuffle (default 0)")
    p.add_argument("--list-root", default=None, help="root of relative paths in a list file (default: its folder)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the decode check of every image")
    p.add_argument("--workers", type=int, default=0, help="worker processes reading/encoding (default 0: this one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR/train.rec")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        summary = pack_dataset(**vars(a))
    except (ValueError, OSError) as err:
        print(f"fiqa.data.pack: error: {err}", file=sys.stderr)
        return 1
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
