"""GraFIQs cost: one gradient pass (forward with BN hooks + backward) vs one plain forward of the same model.

    python benchmarks/grafiqs_cost.py [--device cpu|cuda] [--archs iresnet_tiny iresnet50] [--batch 32]
                                      [--wrt image block2 params] [--repeats 3]

For each architecture (default: ``iresnet_tiny`` on CPU; ``iresnet50 iresnet100`` on CUDA) and each
``quality.wrt`` it times, on the same random batch and after one warm-up call:

* ``plain``: ``backbone(images)`` in eval mode under ``no_grad`` (what every other quality source costs);
* ``grafiqs``: :func:`fiqa.quality.grafiqs.gradient_magnitude` (the embedding and the score of each image).

It prints a markdown table of ms per image (best of ``--repeats`` interleaved runs) and the ratio
grafiqs / plain. ``wrt=params`` runs one image at a time (exact per-image parameter gradients), so its
ratio also holds the loss of batching. Always exits 0; never part of the tests.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from fiqa.backbones import iresnet
from fiqa.quality.grafiqs import WRT, gradient_magnitude


def best_ms(fns: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Best wall time (ms) of each callable; interleaved so a busy machine slows all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[k].append(time.perf_counter() - t0)
    return {k: 1000 * min(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--archs", nargs="+", default=None, help="default: iresnet_tiny (cpu), iresnet50 iresnet100 (cuda)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--wrt", nargs="+", default=["image", "block2", "params"], choices=list(WRT))
    ap.add_argument("--params-batch", type=int, default=4, help="images for wrt=params (one at a time: slow)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    device = torch.device(args.device)
    archs = args.archs or (["iresnet50", "iresnet100"] if device.type == "cuda" else ["iresnet_tiny"])
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        torch.backends.cudnn.benchmark = True
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# GraFIQs cost per image vs one plain forward, batch {args.batch} (params: {args.params_batch})")
    print(f"# device: {device} ({name}), torch {torch.__version__}\n")
    print("| backbone | wrt | plain forward (ms/img) | GraFIQs (ms/img) | ratio |")
    print("|---|---|---|---|---|")
    for arch in archs:
        torch.manual_seed(0)
        model = getattr(iresnet, arch)().to(device).eval()
        for wrt in args.wrt:
            n = args.params_batch if wrt == "params" else args.batch
            images = torch.randn(n, 3, 112, 112, device=device).clamp_(-1, 1)

            def plain(model=model, images=images):
                with torch.no_grad():
                    return model(images).embedding

            def grafiqs(model=model, images=images, wrt=wrt):
                return gradient_magnitude(model, images, wrt)

            ms = best_ms({"plain": plain, "grafiqs": grafiqs}, device, args.repeats)
            p, g = ms["plain"] / n, ms["grafiqs"] / n
            print(f"| {arch} | {wrt} | {p:.2f} | {g:.2f} | {g / p:.2f} |")


if __name__ == "__main__":
    main()
