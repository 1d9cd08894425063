"""Partial FC on the LightningModule's side (:mod:`fiqa.heads.partial_fc` is the head's): sharding the head
at set-up and keeping it out of DDP, gradient clipping over the shards, and the optimizer state of the
sharded centres gathered into a checkpoint and sharded again on load."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fiqa.heads.partial_fc import all_reduce, gather_rows, is_sharded
from fiqa.utils.logging import get_logger

log = get_logger(__name__)


def setup_module(module: nn.Module) -> None:
    """Shard ``module.head`` (Partial FC) over the ranks of the default process group and keep the
    sharded weight out of DDP (its gradients must not be averaged nor its rows broadcast from rank 0).
    Called from ``FaceModule.setup``: the group is up then, and DDP does not wrap the module yet."""
    head = getattr(module, "head", None)
    if getattr(head, "fc", "full") != "partial":
        return
    info = head.shard()
    if info.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        names = [n for n, p in module.named_parameters() if p is head.weight]
        ignore = set(getattr(module, "_ddp_params_and_buffers_to_ignore", [])) | set(names)
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, sorted(ignore))
    log.info(
        f"Partial FC: rank {info.rank}/{info.world_size} holds classes [{info.class_start}, "
        f"{info.class_start + info.num_local}) of {head.num_classes}, sample_rate {head.sample_rate:g}"
    )


def clip_gradients(module: nn.Module, optimizer, clip_val: float | None, algorithm: Any) -> torch.Tensor | None:
    """Gradient-norm clipping with a sharded head: the norm of all gradients, the shards' squared norms
    summed over the ranks (the norm a single process with the whole head would see), so every rank
    scales by the same factor and the backbone stays identical across ranks. Returns the total norm, or
    None (nothing done) when the head is not sharded, clipping is off or by value (the caller clips as usual)."""
    head = getattr(module, "head", None)
    if not clip_val or not is_sharded(head) or (algorithm is not None and algorithm != "norm"):
        return None
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    shard = [p.grad for p in params if p is head.weight]
    rest = [p.grad for p in params if p is not head.weight]
    device = head.weight.device
    sq_shard = torch.nn.utils.get_total_norm(shard).to(device) ** 2 if shard else torch.zeros((), device=device)
    sq_shard = all_reduce(sq_shard.float().reshape(1), "sum")[0]
    sq_rest = torch.nn.utils.get_total_norm(rest).float().to(device) ** 2 if rest else 0.0
    total = torch.sqrt(sq_rest + sq_shard)
    torch.nn.utils.clip_grads_with_norm_(params, float(clip_val), total)
    return total


def _param_id(optimizer, param: torch.Tensor) -> int | None:
    """The id of ``param`` in ``optimizer.state_dict()`` (ids run over the param groups in order)."""
    i = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p is param:
                return i
            i += 1
    return None


def gather_optimizer_state(module: nn.Module, checkpoint: dict) -> None:
    """``on_save_checkpoint``: the sharded weight's optimizer state (every tensor of the shard's shape:
    SGD momentum, Adam moments) gathered to (C, D) in ``checkpoint["optimizer_states"]`` (a collective:
    Lightning runs the hook on every rank). The live optimizer's tensors are left untouched."""
    head = getattr(module, "head", None)
    trainer = getattr(module, "_trainer", None)
    states = checkpoint.get("optimizer_states")
    if not is_sharded(head) or trainer is None or not states:
        return
    for optimizer, state in zip(trainer.optimizers, states):
        pid = _param_id(optimizer, head.weight)
        entry = state.get("state", {}).get(pid) if pid is not None else None
        if not entry:
            continue
        gathered = dict(entry)  # a copy: optimizer.state_dict() shares the live state's dicts
        for key, value in entry.items():
            if torch.is_tensor(value) and value.shape == head.weight.shape:
                gathered[key] = gather_rows(value, head.shard_info, head.num_classes)
        state["state"] = {**state["state"], pid: gathered}


def shard_optimizer_state(module: nn.Module) -> None:
    """``on_train_start`` (after Lightning restored the optimizer on resume): the (C, D) state of the
    head's weight from the checkpoint cut to this rank's rows. State of any other shape (not written
    by fiqa) is dropped with a warning: the optimizer then starts it afresh."""
    head = getattr(module, "head", None)
    trainer = getattr(module, "_trainer", None)
    if getattr(head, "fc", "full") != "partial" or head.shard_info is None or trainer is None:
        return
    full = (head.num_classes, head.embedding_dim)
    for optimizer in trainer.optimizers:
        state = optimizer.state.get(head.weight)
        if not state:
            continue
        for key, value in list(state.items()):
            if not torch.is_tensor(value) or value.dim() == 0 or value.shape == head.weight.shape:
                continue
            if tuple(value.shape) == full:
                state[key] = value[head.shard_info.rows].clone()
            else:
                log.warning(
                    f"Partial FC: the optimizer state {key!r} of head.weight has shape {tuple(value.shape)}, "
                    f"neither the full {full} nor this rank's {tuple(head.weight.shape)}: dropped, it restarts"
                )
                optimizer.state[head.weight] = {}
                break
