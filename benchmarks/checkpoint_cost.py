"""What a resume checkpoint costs at paper scale: size, save and load time of iresnet100 + an ArcFace head
of MS1MV2's 85,742 classes with SGD momentum (the state task=train's last.ckpt holds), written with
fiqa's atomic writer, and the share of training time a checkpoint every N minutes takes.

    python benchmarks/checkpoint_cost.py [--classes 85742] [--backbone iresnet100] [--dir /path/on/the/run/disk]

The directory matters: the figure is the disk's write speed (local NVMe, network file system ...)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from fiqa.backbones import iresnet
from fiqa.heads.fc import ArcFaceHead
from fiqa.utils.checkpoint_io import atomic_torch_save, load_checkpoint_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="iresnet100")
    ap.add_argument("--classes", type=int, default=85742)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary dir)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--every-minutes", type=float, nargs="+", default=[30.0, 10.0])
    a = ap.parse_args()

    backbone = getattr(iresnet, a.backbone)(embedding_dim=512)
    head = ArcFaceHead(num_classes=a.classes, embedding_dim=512)
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    for p in params:  # one step with zero gradients creates the momentum buffers (the state of any real step)
        p.grad = torch.zeros_like(p)
    opt.step()
    n = sum(p.numel() for p in params)
    state = {
        "state_dict": {
            **{f"backbone.{k}": v for k, v in backbone.state_dict().items()},
            **{f"head.{k}": v for k, v in head.state_dict().items()},
        },
        "optimizer_states": [opt.state_dict()],
        "global_step": 1,
        "epoch": 0,
        "loops": {},
    }
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        path = Path(d) / "last.ckpt"
        saves, loads = [], []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            atomic_torch_save(state, path)
            saves.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            load_checkpoint_file(path)
            loads.append(time.perf_counter() - t0)
        size = os.path.getsize(path)
    save, load = min(saves), min(loads)
    print(f"{a.backbone} + ArcFace head ({a.classes:,} classes) + SGD momentum: {n / 1e6:.1f} M parameters")
    print(
        f"checkpoint size {size / 2**20:,.0f} MiB; save {save:.2f} s (best of {a.repeats}: "
        f"{', '.join(f'{s:.2f}' for s in saves)}), {size / 2**20 / save:,.0f} MiB/s; load {load:.2f} s"
    )
    for m in a.every_minutes:
        print(f"a checkpoint every {m:g} min costs {100 * save / (60 * m):.2f} % of the training time")
    print(f"device: CPU ({os.cpu_count()} cores), torch {torch.__version__}, dir {a.dir or tempfile.gettempdir()}")


if __name__ == "__main__":
    main()
