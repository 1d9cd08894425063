"""Training throughput: fiqa's Lightning step against a plain-PyTorch arcface_torch-style step.

    python benchmarks/throughput.py                       # GPU: iresnet50/100 x batch 128/256/512
    python benchmarks/throughput.py --device cpu --backbones iresnet18 --batches 32 --steps 4
    python benchmarks/throughput.py --backbones iresnet100 --batches 128 --profile 20   # + top kernels

Both sides train the same iResNet with an ArcFace head on ``--num-classes`` identities (default
85,742 = MS1MV2) on one fixed random batch held on the device (arcface_torch's "synthetic" data: the
figure is the model step, not the data path; ``benchmarks/decode.py`` measures that).

* ``fiqa``: the real ``method=arcface`` built from our configs (``fiqa.tasks.build``), trained by a
  Lightning ``Trainer`` with ``precision=bf16-mixed`` (the ``trainer=gpu`` preset), channels_last,
  gradient clipping at 5, SGD + poly schedule, with ``trainer.compile`` off and on.
* ``reference``: the arcface_torch recipe written here in plain PyTorch (reference §7.2): the backbone
  under ``autocast(float16)`` with ``fc`` on ``x.float()``, the combined-margin head in float32 on
  ``linear(l2(emb), l2(W))``, ``GradScaler(growth_interval=100)``, unscale, ``clip_grad_norm_(backbone, 5)``,
  SGD(momentum 0.9, wd 5e-4), no channels_last, no compile.

Images/s = batch x timed steps / wall time (after ``--warmup`` steps; CUDA synchronised). Prints a
markdown table with the ratio fiqa / reference and the issue's targets (one H100: iresnet100 bf16
>= 3,000 img/s and >= 1.3x the reference). Always exits 0; never part of the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch._dynamo.utils import counters as dynamo_counters
from torch.autograd import DeviceType

from fiqa.tasks.build import build_method, compile_backbone

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Wall time from the start of step ``warmup`` to the end of step ``warmup + steps - 1``."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.last, self.device, self.t0, self.t1 = warmup, warmup + steps - 1, device, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            sync(self.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.last:
            sync(self.device)
            self.t1 = time.perf_counter()


class KernelProfile(L.Callback):
    """``torch.profiler`` over ``steps`` steps from step ``start`` (after the timed ones): prints the
    ``top`` operators by their own device time, and the GPU kernel time per step against the wall time
    (kernels far below the timed step: the GPU waits on the host, i.e. on Python, launches, syncs)."""

    def __init__(self, start: int, steps: int, top: int, device: torch.device):
        self.start, self.steps, self.stop, self.top, self.device = start, steps, start + steps - 1, top, device
        self.prof, self.t0 = None, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.start:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if self.device.type == "cuda":
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            sync(self.device)
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx != self.stop or self.prof is None:
            return
        sync(self.device)
        wall = (time.perf_counter() - self.t0) / self.steps * 1e3
        self.prof.__exit__(None, None, None)
        events = self.prof.key_averages()
        if self.device.type == "cuda":  # kernels only (as the table's footer): no user annotations
            sort = "self_device_time_total"
            kernels = (e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation)
            busy = sum(e.self_device_time_total for e in kernels) / self.steps / 1e3
            print(f"  profile: GPU kernels {busy:.1f} ms per step, wall {wall:.1f} ms per step under the profiler")
        else:
            sort = "self_cpu_time_total"
            print(f"  profile: wall {wall:.1f} ms per step under the profiler")
        print(events.table(sort_by=sort, row_limit=self.top, max_name_column_width=60))


class Repeat:
    """One batch, ``n`` times (a plain list would be read by Lightning as a collection of loaders)."""

    def __init__(self, batch: dict, n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return (self.batch for _ in range(self.n))


def fixed_batch(batch: int, num_classes: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "image": torch.rand(batch, 3, 112, 112, generator=g).mul(2).sub(1).to(device),
        "label": torch.randint(0, num_classes, (batch,), generator=g).to(device),
        "index": torch.arange(batch, device=device),
    }


def fiqa_step_rate(args, backbone: str, batch: int, compiled: str, device: torch.device) -> float:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=[
                "method=arcface",
                f"backbone={backbone}",
                f"head.num_classes={args.num_classes}",
                "optim=sgd_poly_warmup",
                "val=[]",
            ],
        )
    torch.manual_seed(0)
    method = build_method(cfg, {})
    # each compiled run starts from a clean dynamo state: another batch size compiled earlier in this
    # process would otherwise count as a recompile of the same code (and the limit is 8 per code object)
    torch._dynamo.reset()
    dynamo_counters.clear()
    compile_backbone(method, compiled)  # off | on | a torch.compile mode, as trainer.compile
    timer = StepTimer(args.warmup, args.steps, device)
    callbacks = [timer]
    if args.profile:  # extra steps after the timed ones, so the profiler's overhead stays out of the figure
        callbacks.append(KernelProfile(args.warmup + args.steps, args.profile_steps, args.profile, device))
    total = args.warmup + args.steps + (args.profile_steps if args.profile else 0)
    trainer = L.Trainer(
        accelerator=device.type if device.type != "cuda" else "gpu",
        devices=1,
        precision=args.precision,
        max_steps=total,
        gradient_clip_val=5.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
        benchmark=device.type == "cuda",
    )
    data = Repeat(fixed_batch(batch, args.num_classes, device), total)
    trainer.fit(method, train_dataloaders=data)
    graphs, breaks = dynamo_counters["stats"]["unique_graphs"], sum(dynamo_counters["graph_break"].values())
    if compiled != "off":
        print(f"  dynamo: {graphs} graph(s), {breaks} graph break(s)")
    return batch * args.steps / (timer.t1 - timer.t0)


def reference_step_rate(args, backbone: str, batch: int, device: torch.device) -> float:
    from fiqa.backbones import iresnet

    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True  # as train_v2.py (the fiqa side: Trainer(benchmark=True))
    net = getattr(iresnet, backbone)().to(device).train()
    weight = torch.nn.Parameter(torch.empty(args.num_classes, net.embedding_dim, device=device).normal_(0, 0.01))
    opt = torch.optim.SGD([{"params": net.parameters()}, {"params": [weight]}], lr=0.1, momentum=0.9, weight_decay=5e-4)
    amp = {"fp16": torch.float16, "bf16": torch.bfloat16, "none": None}[args.ref_amp]
    scaler = torch.amp.GradScaler(device.type, growth_interval=100, enabled=amp is torch.float16)
    b = fixed_batch(batch, args.num_classes, device)
    x, y = b["image"], b["label"]

    def step() -> None:
        with torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
            emb = net(x).embedding  # our iResNet tail runs fc on x.float() outside autocast, as arcface_torch's
        cos = F.linear(F.normalize(emb.float()), F.normalize(weight)).clamp(-1, 1)
        target = cos.gather(1, y[:, None])
        theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
        logits = 64.0 * cos.scatter(1, y[:, None], torch.cos(theta + 0.5))
        loss = F.cross_entropy(logits, y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    return batch * args.steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbones", default="iresnet50,iresnet100")
    ap.add_argument("--batches", default="128,256,512")
    ap.add_argument("--num-classes", type=int, default=85742)
    ap.add_argument(
        "--precision", default=None, help="fiqa's trainer.precision (default: bf16-mixed on CUDA, 32-true on CPU)"
    )
    ap.add_argument(
        "--ref-amp",
        default=None,
        choices=["fp16", "bf16", "none"],
        help="the reference's autocast (default: fp16 on CUDA, none on CPU)",
    )
    ap.add_argument("--compile", default="off,on", help="fiqa runs, comma-separated: off, on or a torch.compile mode")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument(
        "--profile", type=int, default=0, help="print the top N operators by device time of each fiqa run (0: off)"
    )
    ap.add_argument("--profile-steps", type=int, default=5, help="steps profiled, after the timed ones")
    args = ap.parse_args()
    device = torch.device(args.device)
    # CPUs without native bf16/fp16 units run autocast 6-7x slower than fp32 (measured here on a 2-core
    # x86 VM): on CPU both sides default to fp32, so the figure compares the two training loops alone.
    cuda = device.type == "cuda"
    args.precision = args.precision or ("bf16-mixed" if cuda else "32-true")
    args.ref_amp = args.ref_amp or ("fp16" if cuda else "none")
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or 'x86'}, {torch.get_num_threads()} threads)"
    )
    print(
        f"device: {name}; torch {torch.__version__}, lightning {L.__version__}; classes {args.num_classes}; "
        f"{args.warmup} warm-up + {args.steps} timed steps\n"
    )
    rows = []
    for backbone in args.backbones.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            try:
                ref = reference_step_rate(args, backbone, batch, device)
            except torch.OutOfMemoryError:
                ref = math.nan
            for mode in args.compile.split(","):
                try:
                    ours = fiqa_step_rate(args, backbone, batch, mode, device)
                except torch.OutOfMemoryError:
                    ours = math.nan
                except Exception as err:  # a compile mode that fails here: the row says so, the table goes on
                    print(f"  {backbone} batch {batch} compile {mode}: failed: {type(err).__name__}: {err}")
                    ours = math.nan
                rows.append((backbone, batch, mode, ours, ref))
                print(
                    f"  {backbone} batch {batch} compile {mode}: fiqa {ours:.1f} img/s, reference {ref:.1f} img/s",
                    flush=True,
                )
            if device.type == "cuda":
                torch.cuda.empty_cache()
    ref_name = {"fp16": "fp16+GradScaler", "bf16": "bf16", "none": "fp32"}[args.ref_amp]
    print(f"\n| backbone | batch | compile | fiqa {args.precision} img/s | reference {ref_name} img/s | ratio |")
    print("|---|---|---|---|---|---|")
    for backbone, batch, mode, ours, ref in rows:
        print(f"| {backbone} | {batch} | {mode} | {ours:,.1f} | {ref:,.1f} | {ours / ref:.2f}x |")
    r100 = [r for r in rows if r[0] == "iresnet100"]
    if r100:
        best, ratio = max(r[3] for r in r100), max(r[3] / r[4] for r in r100)
        print(f"\ntargets (one H100): iresnet100 >= 3,000 img/s: best {best:,.0f}; >= 1.3x reference: {ratio:.2f}x")
    else:
        print("\ntargets (one H100, iresnet100): not measured in this run")


if __name__ == "__main__":
    main()
