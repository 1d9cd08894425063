"""FROQ cost: scoring (after calibration) vs one plain forward, and the calibration time.

    python benchmarks/froq_cost.py [--arch iresnet50] [--device cpu|cuda] [--batch 16] [--repeats 5]
                                   [--calibration-size 128] [--labels serfiq|norm|auxiliary] [--T 20]

A randomly initialised backbone (the cost does not depend on the weights) in a FaceModule, eval mode:

* ``plain``: ``model(images)`` under ``no_grad`` (one forward: embedding + norm quality);
* ``froq``: ``FROQ(model)(images)``: the same forward with forward hooks reducing the calibrated layers'
  outputs to their per-image L2 norms, and their aggregate;
* calibration: ``FROQ.calibrate()`` with the given settings, SynthFace images generated on the spot
  (rendering, the pseudo labels and the one hooked pass over every candidate module included), timed once.

Prints a markdown table (best of ``--repeats`` interleaved runs) with ms per image and the ratio froq / plain,
and the median of the per-repeat ratios (robust on a shared machine).
Always exits 0; never part of the tests.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fiqa.backbones import iresnet
from fiqa.methods.base import FaceModule
from fiqa.methods.froq import FROQ


def timings(fns: dict, device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Wall times (ms) of each callable per repeat; interleaved, the order alternating, so that a busy
    (shared) machine hits all alike."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for r in range(repeats):
        for k, fn in list(fns.items())[:: 1 if r % 2 == 0 else -1]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[k].append(1000 * (time.perf_counter() - t0))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="iresnet50", help="a fiqa.backbones.iresnet constructor (iresnet_tiny, ...)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--calibration-size", type=int, default=128)
    ap.add_argument("--labels", default="serfiq", choices=["norm", "serfiq", "auxiliary"])
    ap.add_argument("--T", type=int, default=20, help="SER-FIQ passes for --labels serfiq")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = FaceModule(getattr(iresnet, args.arch)(), channels_last=device.type == "cuda")
    model.input_convention = {"color": "rgb", "mean": 127.5, "std": 127.5}
    model.eval().to(device)
    params = {"T": args.T, "p": 0.4} if args.labels == "serfiq" else {}
    froq = FROQ(model, calibration_size=args.calibration_size, labels=args.labels, label_params=params).eval()
    n_candidates = sum(1 for n, _ in model.backbone.named_modules() if n)

    t0 = time.perf_counter()
    with torch.inference_mode():
        cal = froq.calibrate(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    calib_s = time.perf_counter() - t0

    images = torch.rand(args.batch, 3, 112, 112, device=device) * 2 - 1

    def plain():
        with torch.no_grad():
            return model(images)

    def observed():
        with torch.no_grad():
            return froq(images)

    t = timings({"plain": plain, "froq": observed}, device, args.repeats)
    ms = {k: min(v) for k, v in t.items()}
    paired = statistics.median(f / p for f, p in zip(t["froq"], t["plain"]))
    threads = torch.get_num_threads()
    print(f"\n{args.arch} on {device} ({platform.processor() or platform.machine()}, {threads} threads), "
          f"batch {args.batch}, best of {args.repeats}\n")  # fmt: skip
    print("| | ms / batch | ms / image | vs plain |")
    print("|---|---:|---:|---:|")
    for k, v in ms.items():
        print(f"| {k} | {v:.1f} | {v / args.batch:.2f} | {v / ms['plain']:.3f}x |")
    print(f"\nmedian of the paired per-repeat ratios froq / plain: {paired:.3f}x")
    print(
        f"\ncalibration: {calib_s:.1f} s for {args.calibration_size} SynthFace images, labels={args.labels}, "
        f"{n_candidates} candidate modules -> {len(cal.layers)} layers {cal.layers} "
        f"(calibration Spearman {cal.spearman:.3f}; random weights, so the choice itself means nothing)"
    )


if __name__ == "__main__":
    main()
