"""Speed of the ISO/IEC 29794-5 component measures (quality=iso, fiqa.quality.iso) on CPU.

    python benchmarks/iso_speed.py [--repeats 5] [--crops 500] [--threads N]

* ``photo``: :func:`fiqa.quality.iso.measure_face` (OFIQ's 616x616 alignment of the face region, every
  component) on real faces: scikit-image's astronaut, matplotlib's Grace Hopper and the six faces of
  insightface's t1.jpg (when ``make install`` has put the insightface wheel in ``.cache/testdata``), the
  5 landmarks found once beforehand by the MTCNN detector (detection is not timed: benchmarks/align_throughput.py);
* ``crop``: :func:`fiqa.quality.iso.measure_aligned` (the appearance components) on SynthFace 112x112 crops.

Per face, best of ``--repeats``. OFIQ's own users report 4-7 s per image on CPU (its learned models
included). Prints a markdown table. Always exits 0; never part of the tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def real_faces():
    from tests.helpers.photos import astronaut, grace_hopper, wheel_path

    from fiqa.detect import FaceDetector

    imgs = [astronaut(), grace_hopper()]
    if wheel_path().is_file():
        from tests.helpers.photos import insightface

        imgs.append(insightface("t1.jpg"))
    det = FaceDetector(device="cpu")
    return [(img, f.landmarks[k], f.boxes) for img in imgs for f in [det([img])[0]] for k in range(len(f))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--crops", type=int, default=500)
    ap.add_argument("--threads", type=int, default=None, help="cv2.setNumThreads (default: OpenCV's own)")
    a = ap.parse_args()
    if a.threads is not None:
        cv2.setNumThreads(a.threads)
    from fiqa.data.synthface import SynthFacePairs
    from fiqa.quality import iso

    faces = real_faces()
    crops = [SynthFacePairs(num_pairs=a.crops // 2 + 1, seed=0)[i][0] for i in range(a.crops)]

    def best(fn, items):
        fn(*items[0])  # warm-up
        times = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            for it in items:
                fn(*it)
            times.append((time.perf_counter() - t0) / len(items))
        return min(times) * 1000

    photo_ms = best(iso.measure_face, faces)
    crop_ms = best(iso.measure_aligned, [(c,) for c in crops])
    print(f"# quality=iso on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"cv2 threads {cv2.getNumThreads()}, numpy {np.__version__}, opencv {cv2.__version__}\n")  # fmt: skip
    print("| input | faces | ms per face | faces / s |")
    print("|---|---|---|---|")
    print(f"| photo (all {len(iso.NAMES)} components) | {len(faces)} | {photo_ms:.1f} | {1000 / photo_ms:.0f} |")
    print(f"| aligned 112x112 crop ({len(iso.APPEARANCE)} appearance components) | {len(crops)} | {crop_ms:.1f} | "
          f"{1000 / crop_ms:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
