"""Partial FC (``head.fc=partial head.sample_rate=r``): the class centres of a margin head sharded
over the ranks and sampled, the softmax cross-entropy computed across the shards (arcface_torch's
Partial FC v2; shared/reference data_and_eval.md §7.1).

**Sharding** (:class:`ShardInfo`): over ``W`` ranks, rank ``r`` holds the rows
``[class_start, class_start + num_local)`` of the (C, D) weight, with ``num_local = C//W + (r < C%W)``
and ``class_start = C//W*r + min(r, C%W)``. The head is built whole (so the initial centres do not
depend on ``W``) and keeps only its rows when :meth:`~fiqa.heads.fc.MarginHead.shard` runs: in
``FaceModule.setup`` (the process group is up then; nothing at import or construction needs one), or
lazily at the first forward. With ``W = 1`` Partial FC is class sampling only.

**Forward** (:func:`forward`), on every rank:

1. all-gather the embeddings (autograd-aware: :func:`gather_embeddings`) and the labels: the global
   batch of ``N = sum of the ranks' B`` rows;
2. labels outside the shard become ``-1``, the others ``label - class_start``;
3. ``sample_rate < 1`` (training only): ``max(int(sample_rate * num_local), #positives)`` centres are
   kept, every positive class of the global batch among them (:func:`sample_classes`); labels are
   remapped into the kept set and only the kept rows get a gradient (weight decay and momentum still
   touch every row of the shard, as in arcface_torch);
4. cosines ``(N, kept)`` and the head's margin, applied only to rows whose target is in this shard;
   per-row margin terms (MagFace's magnitude, AdaFace's norm and margin scaler) come from the gathered
   embeddings, so they are those of the row's own image;
5. :func:`cross_entropy`: the distributed softmax cross-entropy (all-reduce MAX of the row maxima,
   SUM of the sums of exponentials and of the target logits), the mean over the ``N`` rows; its
   backward is ``(softmax - onehot) / N`` on this shard's logits, no communication.

The id loss is the same global-batch value on every rank. The backward of the gathered embeddings
sums every rank's gradient for a rank's rows and multiplies it by ``W``: DDP averages the backbone's
gradients over the ranks, so the backbone then receives the gradient of the global-batch loss
(arcface_torch does the same). The sharded weight is kept out of DDP (not averaged, not broadcast:
:func:`setup_module`), and gradient-norm clipping adds the shards' squared norms across ranks, so every
rank clips with the same factor (:func:`clip_gradients`).

**Checkpoints**: ``state_dict()`` holds the full (C, D) weight (the shards gathered in chunks into a
CPU tensor on every rank: a collective, so every rank must call it, which Lightning does: it calls
``state_dict`` in ``dump_checkpoint`` on all ranks and only rank 0 writes the file), and
``load_state_dict`` of a full weight keeps this rank's rows: a checkpoint written under any world size
loads under any other. The optimizer state of the sharded weight (SGD's momentum, Adam's moments) is
gathered to (C, D) into the checkpoint too (:func:`gather_optimizer_state`) and re-sharded after it is
loaded on resume (:func:`shard_optimizer_state`), so a resumed run keeps its momentum under another
world size. Memory: gathering needs ``C * D * 4`` bytes of host memory per rank while a checkpoint is
written, and the head is built whole on the host before it is sharded (2 GB at 1M x 512).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from fiqa.utils.logging import get_logger

log = get_logger(__name__)

#: ``head.fc`` values.
FC_MODES = ("full", "partial")
#: The heads (``head=...``) that support ``head.fc=partial``.
PARTIAL_FC_HEADS = ("arcface", "cosface", "combined", "magface", "adaface")
#: Bytes per rank per collective when gathering a shard into the full (C, D) tensor. Kept small: with
#: gloo (torch 2.14, Lightning imported) a process that all-gathered a single tensor of 16 MB aborts at
#: exit ("terminate called without an active exception"); 4 MB pieces do not.
GATHER_CHUNK_BYTES = 4 * 2**20


def check_fc(fc: str, sample_rate: float, head_name: str, supported: bool) -> tuple[str, float]:
    """Validated ``(head.fc, head.sample_rate)``; clear errors naming the keys and the valid choices."""
    if fc not in FC_MODES:
        raise ValueError(f"head.fc must be one of {list(FC_MODES)}, got {fc!r}")
    try:
        rate = float(sample_rate)
    except (TypeError, ValueError):
        raise ValueError(f"head.sample_rate must be a number in (0, 1], got {sample_rate!r}") from None
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"head.sample_rate must be in (0, 1], got {sample_rate}")
    if fc == "partial" and not supported:
        raise ValueError(
            f"head.fc=partial is not supported by {head_name}; Partial FC works with the margin heads "
            f"head={'|'.join(PARTIAL_FC_HEADS)} (set head.fc=full)"
        )
    if fc == "full" and rate < 1.0:
        raise ValueError(f"head.sample_rate={sample_rate} samples class centres, which needs head.fc=partial")
    return fc, rate


# ---- sharding --------------------------------------------------------------------------------
def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(class_start, num_local)`` of ``rank``: arcface_torch's ``C//W*r + min(r, C%W)`` and
    ``C//W + (r < C%W)``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of size {world_size}")
    base, extra = divmod(int(num_classes), int(world_size))
    return base * rank + min(rank, extra), base + int(rank < extra)


@dataclass(frozen=True)
class ShardInfo:
    """Where this rank's rows of the (C, D) weight are."""

    rank: int
    world_size: int
    class_start: int
    num_local: int

    @classmethod
    def of(cls, num_classes: int, rank: int, world_size: int) -> ShardInfo:
        start, n = shard_range(num_classes, rank, world_size)
        return cls(int(rank), int(world_size), start, n)

    @property
    def rows(self) -> slice:
        return slice(self.class_start, self.class_start + self.num_local)


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_sharded(head: Any) -> bool:
    """True when ``head`` holds only its rows of a weight sharded over more than one rank."""
    info = getattr(head, "shard_info", None)
    return getattr(head, "fc", "full") == "partial" and info is not None and info.world_size > 1


# ---- collectives --------------------------------------------------------------------------------
def gather_sizes(n: int, device: torch.device) -> list[int]:
    """Every rank's batch size (the last batch of an epoch may differ between ranks)."""
    t = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(x.item()) for x in out]


def _all_gather_padded(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All ranks' rows of ``x`` concatenated in rank order (rows padded to the largest batch)."""
    m = max(sizes)
    pad = x.new_zeros((m, *x.shape[1:]))
    pad[: x.shape[0]] = x
    out = [torch.empty_like(pad) for _ in sizes]
    dist.all_gather(out, pad.contiguous())
    return torch.cat([o[:s] for o, s in zip(out, sizes)])


def all_gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """All ranks' rows of ``x`` (no gradient), in rank order; ``sizes`` from :func:`gather_sizes`."""
    with torch.no_grad():
        return _all_gather_padded(x.detach(), sizes)


class _AllGatherRows(torch.autograd.Function):
    """All-gather with backward: each rank gets the sum over ranks of the gradient of its own rows,
    times ``grad_scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: tuple[int, ...], grad_scale: float) -> torch.Tensor:
        ctx.sizes, ctx.grad_scale, ctx.rank = sizes, grad_scale, dist.get_rank()
        return _all_gather_padded(x, list(sizes))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)  # gloo has no reduce_scatter; N x D is small
        start = sum(ctx.sizes[: ctx.rank])
        own = grad[start : start + ctx.sizes[ctx.rank]]
        if ctx.grad_scale != 1.0:
            own = own * ctx.grad_scale
        return own, None, None


def gather_embeddings(x: torch.Tensor, sizes: list[int], grad_scale: float | None = None) -> torch.Tensor:
    """All ranks' embeddings ``(N, D)`` in rank order, differentiable: the gradient of a rank's rows
    is summed over the ranks and multiplied by ``grad_scale`` (default: the world size, which undoes
    DDP's averaging of the backbone's gradients, as arcface_torch)."""
    scale = float(dist.get_world_size()) if grad_scale is None else float(grad_scale)
    return _AllGatherRows.apply(x, tuple(int(s) for s in sizes), scale)


def all_reduce(t: torch.Tensor, op: str) -> torch.Tensor:
    """In-place all-reduce (``op``: sum | max) over the default group; a no-op without one."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return t


@torch.no_grad()
def gather_rows(local: torch.Tensor, info: ShardInfo, num_classes: int) -> torch.Tensor:
    """The full ``(C, ...)`` tensor from every rank's rows ``local`` (``(num_local, ...)``), on the CPU
    of every rank, gathered in chunks of at most 4 MB per rank (a collective: call it on all ranks)."""
    full = torch.empty((num_classes, *local.shape[1:]), dtype=local.dtype, device="cpu")
    if info.world_size == 1:
        return full.copy_(local)
    shards = [ShardInfo.of(num_classes, r, info.world_size) for r in range(info.world_size)]
    longest = max(s.num_local for s in shards)
    row_bytes = max(1, local[:1].numel() * local.element_size())
    chunk = max(1, min(longest, GATHER_CHUNK_BYTES // row_bytes))
    for k in range(0, longest, chunk):
        piece = local.new_zeros((chunk, *local.shape[1:]))
        part = local[k : k + chunk]
        piece[: part.shape[0]] = part
        out = [torch.empty_like(piece) for _ in shards]
        dist.all_gather(out, piece)
        for s, o in zip(shards, out):
            n = max(0, min(chunk, s.num_local - k))
            if n:
                full[s.class_start + k : s.class_start + k + n] = o[:n].cpu()
    return full


# ---- labels and sampling -------------------------------------------------------------------------
def local_labels(labels: torch.Tensor, class_start: int, num_local: int) -> torch.Tensor:
    """``label - class_start`` for the labels in ``[class_start, class_start + num_local)``, else ``-1``."""
    inside = (labels >= class_start) & (labels < class_start + num_local)
    return torch.where(inside, labels - class_start, torch.full_like(labels, -1))


def sample_classes(
    labels: torch.Tensor, num_local: int, sample_rate: float, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, remapped labels)``: ``index`` (sorted) the kept rows of the shard: every positive class
    (the labels >= 0) and random others up to ``max(1, int(sample_rate * num_local))`` in all (all the
    positives when there are more); the labels remapped to positions in ``index`` (``-1`` stays)."""
    valid = labels >= 0
    positive = torch.unique(labels[valid])
    num_sample = max(1, int(sample_rate * num_local))
    if num_sample > positive.numel():
        perm = torch.rand(num_local, device=labels.device, generator=generator)
        perm[positive] = 2.0  # positives first
        index = torch.topk(perm, k=num_sample).indices.sort().values
    else:
        index = positive
    remapped = torch.where(valid, torch.searchsorted(index, labels.clamp_min(0)), labels)
    return index, remapped


# ---- the forward pass and the loss -----------------------------------------------------------------
@dataclass
class PartialInfo:
    """What a Partial FC forward adds to a ``HeadOutput``: its ``logits`` and ``cosine`` are
    ``(N, kept)``, rows = the global batch of every rank in rank order, columns = this shard's kept
    centres (``index`` into the shard, ``None`` when all are kept).

    labels: (N,) the rows' targets among the columns, ``-1`` where the target is in another shard.
    rows: this rank's rows of the global batch.
    """

    labels: torch.Tensor
    rows: slice
    shard: ShardInfo
    index: torch.Tensor | None = None


def forward(head: nn.Module, embedding: torch.Tensor, labels: torch.Tensor):
    """A margin head's forward under Partial FC (see the module docstring): the head provides
    ``shard()``, ``cosine(embedding, weight)``, ``row_terms(embedding)``,
    ``margin_logits(cos, labels, terms)`` and ``output_type``. The output's per-row terms
    (``norm``, ``ms``) are those of this rank's rows (B,)."""
    info = head.shard_info if head.shard_info is not None else head.shard()
    n_own = embedding.shape[0]
    if info.world_size > 1:
        sizes = gather_sizes(n_own, embedding.device)
        emb_all = gather_embeddings(embedding, sizes)
        labels_all = all_gather_rows(labels, sizes)
        first = sum(sizes[: info.rank])
    else:
        emb_all, labels_all, first = embedding, labels, 0
    rows = slice(first, first + n_own)
    targets = local_labels(labels_all.long(), info.class_start, info.num_local)
    weight, index = head.weight, None
    if head.training and head.sample_rate < 1.0:
        index, targets = sample_classes(targets, info.num_local, head.sample_rate)
        weight = weight[index]
    cos = head.cosine(emb_all, weight)
    terms = head.row_terms(emb_all)
    logits = head.margin_logits(cos, targets, terms)
    own = {k: v[rows].detach() for k, v in terms.items()}
    own.update(head.row_terms(embedding))  # this rank's rows with their own gradient (MagFace's g(a))
    return head.output_type(logits=logits, cosine=cos, partial=PartialInfo(targets, rows, info, index), **own)


class _DistCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of rows whose classes are spread over the ranks' columns."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = logits.detach().float()
        n = z.shape[0]
        row_max = all_reduce(z.max(dim=1).values, "max")
        e = (z - row_max[:, None]).exp_()
        sum_e = all_reduce(e.sum(dim=1), "sum")
        valid = labels >= 0
        idx = labels.clamp_min(0).view(-1, 1)
        target = torch.where(valid, z.gather(1, idx).squeeze(1) - row_max, torch.zeros_like(row_max))
        target = all_reduce(target, "sum")
        loss = (sum_e.log() - target).mean()
        e.div_(sum_e[:, None])  # the softmax over all ranks' columns
        ctx.save_for_backward(e, labels)
        ctx.n, ctx.dtype = n, logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        softmax, labels = ctx.saved_tensors
        valid = labels >= 0
        grad = softmax.clone()
        rows = valid.nonzero().squeeze(1)
        grad[rows, labels[rows]] -= 1.0
        grad.mul_(grad_loss / ctx.n)
        return grad.to(ctx.dtype), None


def cross_entropy(head_out: Any, labels: torch.Tensor) -> torch.Tensor:
    """The id loss of a head's output, the mean softmax cross-entropy of its logits: ``F.cross_entropy``
    for a full head, the distributed one over the global batch under Partial FC (then the same value on
    every rank). Every method computes its id loss through this."""
    partial = getattr(head_out, "partial", None)
    if partial is None:
        return nn.functional.cross_entropy(head_out.logits, labels)
    return _DistCrossEntropy.apply(head_out.logits, partial.labels)
