"""Peak memory of one training step of a Partial FC head (``head.fc=partial``) at 1M and 10M identities,
``sample_rate`` 0.1 vs 1.0.

    python benchmarks/partial_fc_memory.py [--device auto|cpu|cuda] [--classes 1000000 10000000]
                                          [--rates 0.1 1.0] [--batch 128] [--dim 512]

One process (W = 1: Partial FC is then class sampling only; with W ranks each holds C/W of the rows),
an ArcFace head (s=64, m=0.5) on random embeddings (B, D) that require a gradient (no backbone), SGD
with momentum 0.9 and weight decay 5e-4 as arcface_torch. One warm-up step creates the momentum; the
measured step is ``zero_grad -> head -> cross_entropy -> backward -> step``.

* CUDA: ``torch.cuda.max_memory_allocated`` over the measured step (weight, momentum, gradient and the
  step's temporaries), each configuration in a fresh process.
* CPU: the peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` before the step) of a
  fresh process, less its resident set once Python, torch and fiqa are imported. A configuration whose estimate does not
  fit in 80 % of the available memory is skipped, not tried: 10M x 512 fp32 is 20 GB for the weight
  alone, 60 GB with its gradient and momentum, so on a 24 GB machine only 1M runs.

Prints a markdown table. Always exits 0; never part of the tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

import torch

GB = 1e9


def estimate_bytes(num_classes: int, dim: int, batch: int, rate: float) -> float:
    """A rough estimate of the step's peak (used to skip what cannot fit): weight + momentum + (dense)
    gradient of the (C, D) head; without sampling also the normalised copy of the weight and a temporary of
    its size in the backward; with sampling the kept rows (their copy, its normalised copy, their gradient);
    6 tensors of the logits' size (B, kept); and 0.55 x the weight's size more, fitted to the peaks measured
    on an H100 (1M at rates 0.1 and 1.0, 10M at 0.1: all three within 1 % with it, 14-16 % under without;
    most likely the SGD step's weight-decay temporaries)."""
    full = num_classes * dim * 4
    kept = max(1, int(rate * num_classes))
    centres = 2 * full if rate >= 1.0 else 3 * kept * dim * 4
    return 3.55 * full + centres + 6 * batch * kept * 4


def _vm(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def run_one(num_classes: int, rate: float, args: argparse.Namespace) -> dict:
    """One configuration, in this process."""
    from fiqa.heads.fc import ArcFaceHead
    from fiqa.heads.partial_fc import cross_entropy

    device = torch.device(args.device)
    base = _vm("VmRSS") if device.type == "cpu" else 0  # Python, torch and fiqa imported
    torch.manual_seed(0)
    with torch.device(device):  # the weight is created on the device directly (no host copy)
        head = ArcFaceHead(num_classes, args.dim, fc="partial", sample_rate=rate).train()
    head.shard()
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    emb = torch.randn(args.batch, args.dim, device=device, requires_grad=True)
    labels = torch.randint(0, num_classes, (args.batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        emb.grad = None
        loss = cross_entropy(head(emb, labels), labels)
        loss.backward()
        opt.step()
        return loss

    step()  # warm-up: the momentum buffer
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        return {"peak": torch.cuda.max_memory_allocated(device), "seconds": dt, "device": torch.cuda.get_device_name()}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set (Linux >= 4.0)
    before = _vm("VmRSS")
    t0 = time.perf_counter()
    step()
    dt = time.perf_counter() - t0
    return {
        "peak": _vm("VmHWM") - base,
        "before": before - base,
        "seconds": dt,
        "device": platform.processor() or "cpu",
    }


def available_bytes(device: str) -> float:
    if device == "cuda":
        return torch.cuda.get_device_properties(0).total_memory
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info.get("MemAvailable", 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--classes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    p.add_argument("--rates", type=float, nargs="+", default=[0.1, 1.0])
    p.add_argument("--batch", type=int, default=128, help="embeddings per step (arcface_torch: 128 per GPU)")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--one", type=float, nargs=2, metavar=("CLASSES", "RATE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.one:  # child process: one configuration, JSON on stdout
        print(json.dumps(run_one(int(args.one[0]), args.one[1], args)))
        return

    avail = available_bytes(args.device)
    budget = avail if args.device == "cuda" else 0.8 * avail
    print(f"Partial FC step memory: ArcFace head, D={args.dim}, batch {args.batch}, SGD momentum, 1 process, "
          f"{args.device} ({avail / GB:.1f} GB {'on the device' if args.device == 'cuda' else 'available'}); "
          f"torch {torch.__version__}\n")  # fmt: skip
    head = "| identities | sample_rate | kept centres | peak memory | estimate | step time | note |"
    print(head + "\n|---|---|---|---|---|---|---|")
    for c in args.classes:
        for rate in args.rates:
            est = estimate_bytes(c, args.dim, args.batch, rate)
            kept = max(1, int(rate * c))
            row = f"| {c:,} | {rate:g} | {kept:,} |"
            if est > budget:
                print(f"{row} – | {est / GB:.1f} GB | – | skipped: the estimate exceeds {budget / GB:.1f} GB |")
                continue
            cmd = [sys.executable, __file__, "--device", args.device, "--batch", str(args.batch),
                   "--dim", str(args.dim), "--one", str(c), str(rate)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                why = "out of memory" if "out of memory" in proc.stderr.lower() else proc.stderr.strip()[-120:]
                print(f"{row} – | {est / GB:.1f} GB | – | failed: {why} |")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            note = f"held between steps: {r['before'] / GB:.2f} GB" if "before" in r else r["device"]
            print(f"{row} {r['peak'] / GB:.2f} GB | {est / GB:.1f} GB | {1000 * r['seconds']:.0f} ms | {note} |")


if __name__ == "__main__":
    main()
