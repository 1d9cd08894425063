"""Photo alignment throughput: MTCNN detection + 5-point alignment of 640x480 photos (task=align's work).

    python benchmarks/align_throughput.py [--device cpu|cuda] [--images 48] [--batch 1 8] [--repeats 3]
                                          [--threads N]

The photos are real (scikit-image's astronaut, matplotlib's Grace Hopper, and insightface's t1.jpg group
photo of six when ``make install`` has put the insightface wheel in ``.cache/testdata``), each scaled
and padded to 640x480 and encoded as JPEG q95 in a temporary folder. Three stages are timed (best of
``--repeats``, after a warm-up):

* ``detect``: ``FaceDetector(images)`` on decoded arrays, ``--batch`` photos per call;
* ``align``: ``fiqa.detect.align.align_photos`` from the JPEG files: decode, detect, select (all faces),
  ``norm_crop`` every face (what task=align does before writing);
* ``task``: ``python main.py task=align`` on the folder, wall time of the whole process (imports and
  writing the crops, CSVs and report included), once.

Prints a markdown table of images/s and faces/s. Always exits 0; never part of the tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def photos_640x480() -> list[np.ndarray]:
    import matplotlib.cbook as cbook
    from skimage import data

    from fiqa.data.photos import decode_photo, read_photo

    imgs = [data.astronaut(), read_photo(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))]
    wheel = ROOT / ".cache" / "testdata" / "insightface-2.1-py3-none-any.whl"
    if wheel.is_file():
        with zipfile.ZipFile(wheel) as z:
            imgs.append(decode_photo(z.read("insightface/data/images/t1.jpg")))
    out = []
    for img in imgs:
        h, w = img.shape[:2]
        s = min(640 / w, 480 / h)
        small = cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        canvas = np.full((480, 640, 3), 110, np.uint8)
        y, x = (480 - small.shape[0]) // 2, (640 - small.shape[1]) // 2
        canvas[y : y + small.shape[0], x : x + small.shape[1]] = small
        out.append(canvas)
    return out


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-task", action="store_true", help="skip the main.py task=align run")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from fiqa.detect import FaceDetector
    from fiqa.detect.align import align_photos

    base = photos_640x480()
    images = [base[i % len(base)] for i in range(a.images)]
    det = FaceDetector(device=a.device)
    n_faces = sum(len(f) for f in det(images))
    rows = []
    for b in a.batch:

        def run_detect(b=b):
            for i in range(0, len(images), b):
                det(images[i : i + b])

        t = best(run_detect, a.repeats)
        rows.append((f"detect (batch {b})", len(images) / t, n_faces / t))
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, img in enumerate(images):
            f = Path(tmp) / "in" / f"photo_{i:04d}.jpg"
            f.parent.mkdir(exist_ok=True)
            cv2.imwrite(str(f), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            files.append((str(f), f.name))
        for b in a.batch:

            def run_align(b=b):
                for _ in align_photos(files, det, faces="all", min_face_size=0, batch_images=b):
                    pass

            t = best(run_align, a.repeats)
            rows.append((f"decode + detect + align (batch {b})", len(images) / t, n_faces / t))
        if not a.no_task:
            t0 = time.perf_counter()
            env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
            subprocess.run(
                [sys.executable, str(ROOT / "main.py"), "task=align", f"align.input={tmp}/in",
                 f"align.output={tmp}/out", "align.faces=all", "align.progress=false", f"detect.device={a.device}",
                 f"hydra.run.dir={tmp}/run"],
                check=True, capture_output=True, env=env,
            )  # fmt: skip
            t = time.perf_counter() - t0
            rows.append(("python main.py task=align (whole process)", len(images) / t, n_faces / t))
    print(
        f"\n{len(images)} photos 640x480 ({len(base)} distinct), {n_faces} faces; device {a.device}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores\n"
    )
    print("| stage | images/s | faces/s |\n|---|---:|---:|")
    for name, ips, fps in rows:
        print(f"| {name} | {ips:.1f} | {fps:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
