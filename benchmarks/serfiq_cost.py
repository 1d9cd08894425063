"""SER-FIQ cost: T stochastic tails vs one plain forward of an iResNet-50 (512-d, 112x112).

    python benchmarks/serfiq_cost.py [--device cpu|cuda] [--batch 16] [--T 100] [--repeats 5]
                                     [--kinds dropout dropout2d] [--chunk 1024] [--amp bf16]

For each dropout kind it times, on the same batch and after one warm-up call:

* ``plain``: ``backbone(images)`` in eval mode under ``no_grad`` (one deterministic forward);
* ``serfiq``: ``fiqa.quality.serfiq_torch.serfiq_quality(backbone, images, T)``, i.e. the trunk once
  plus the dropout -> fc -> features tail T times for the whole batch (fp32), plus the distances;
* ``tail``: the T stochastic tails alone (``stochastic_embeddings`` on a cached trunk output).

It prints a markdown table (best of ``--repeats`` interleaved runs, ms per batch) with the ratio serfiq / plain and
PASS/FAIL against the target ratio <= 1.5. FLOPs (multiply-adds): iResNet-50 is ~6.3 G per image,
the tail 25088 x 512 = 12.8 M per repetition, so T=100 adds ~1.3 G (~0.2x). ``--amp bf16`` runs
both under ``torch.autocast`` (the tail stays fp32). Always exits 0; never part of the tests.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from fiqa.backbones.iresnet import iresnet50
from fiqa.quality.serfiq_torch import serfiq_quality, stochastic_embeddings

TARGET = 1.5


def best_ms(fns: dict, device: torch.device, repeats: int) -> dict[str, float]:
    """Best wall time (ms) of each callable; the calls are interleaved so a busy machine hits all alike."""
    for fn in fns.values():
        fn()  # warm-up (allocations, cuDNN / oneDNN kernel choice)
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


def time_kind(kind: str, images: torch.Tensor, args: argparse.Namespace, amp_dtype) -> dict[str, float]:
    """Plain forward, SER-FIQ and the T tails alone, for an iresnet50 with this dropout kind."""
    device = images.device
    torch.manual_seed(0)
    model = iresnet50(dropout=args.p, dropout_kind=kind).to(device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    kw = {} if args.chunk is None else {"chunk": args.chunk}

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def plain():
        with torch.no_grad(), autocast():
            return model(images).embedding

    def serfiq():
        with autocast():
            return serfiq_quality(model, images, T=args.T, generator=gen, **kw)

    with torch.no_grad(), autocast():
        fmap = model.trunk(images)

    def tail():
        return stochastic_embeddings(model, fmap, T=args.T, generator=gen, **kw)

    return best_ms({"plain": plain, "serfiq": serfiq, "tail": tail}, device, args.repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--T", type=int, default=100)
    ap.add_argument("--p", type=float, default=0.4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=None, help="rows per fc call (default: the module's)")
    ap.add_argument("--kinds", nargs="+", default=["dropout", "dropout2d"], choices=["dropout", "dropout2d"])
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        torch.backends.cudnn.benchmark = True
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    print(f"# SER-FIQ cost: iresnet50, batch {args.batch}, T={args.T}, p={args.p}, amp={args.amp}")
    print(f"# device: {device} ({name}), torch {torch.__version__}\n")
    print("| dropout kind | plain forward (ms) | SER-FIQ (ms) | tail x T only (ms) | ratio | target <= 1.5 |")
    print("|---|---|---|---|---|---|")
    images = torch.randn(args.batch, 3, 112, 112, device=device).clamp_(-1, 1)
    for kind in args.kinds:
        ms = time_kind(kind, images, args, amp_dtype)
        ratio = ms["serfiq"] / ms["plain"]
        verdict = "PASS" if ratio <= TARGET else "FAIL"
        print(f"| {kind} | {ms['plain']:.1f} | {ms['serfiq']:.1f} | {ms['tail']:.1f} | {ratio:.2f} | {verdict} |")


if __name__ == "__main__":
    main()
