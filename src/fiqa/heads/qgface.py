"""QGFace's two heads (quality-guided joint training, arXiv 2312.17494; shared/reference
methods_eqface_qgface_adaface §2.3-§2.5). Quality of a sample: ``q = (ms + 1) / 2`` in [0, 1], ``ms``
the AdaFace margin scaler of its feature norm (detached, so no gate carries a gradient).

**Classification** (:class:`QGFaceHead`, an :class:`~fiqa.heads.adaface.AdaFaceHead`): the scaled
AdaFace logits of each sample are multiplied by the quality gate ``sigmoid(2 s (q - qs))`` (the
original's ``sigmoid(s (ms + 2 (0.5 - qs)))``, ``s`` the head's scale), about a step at ``q = qs``:
low-quality samples get (almost) uniform logits, so (almost) no classification gradient. The gate
multiplies the logits, as the original does, not the per-sample loss. ``qs = 0`` switches it off.

**Contrast** (:class:`QGFaceContrast`, no parameters): an image-image InfoNCE between the two views of
each training image (low-quality view ``lq`` = anchor, high-quality view ``hq`` = positive), negatives
from a queue of past embeddings (unit vectors, with their labels, sample indices and the class proxies
``W[label]`` at the time they were stored):

1. before use, each queue entry follows its class proxy: ``e <- e + ||e|| / ||W_old|| * (W_now - W_old)``
   (the *proxy-updated* queue; applied on the fly, the stored entry and ``W_old`` are kept);
2. rows ``lq_i`` (and, ``symmetric``, rows ``hq_i``): ``[cos(lq_i, hq_i) - margin, cos(lq_i, e_j) ...]``;
   the sample's own entries and (``mask_same_class``) every entry of its class are no negatives;
3. the pair's quality ``t`` = min (``low``), mean or max of the two views' ``q``; gate ``g(t)`` =
   ``t < qs ? g1(t) : 0`` with ``g1 = 1`` (``sgn``), ``(1 - cos(pi t / qs)) / 2`` (``cos``) or ``t / qs``
   (``linear``); ``qs = 0`` gives ``g = 1`` for every pair;
4. loss = mean over rows of ``CE(s * g * row, target 0)``, times ``log(129) / log(K + 1)`` (``K`` = filled
   queue entries; the loss scale of 128 negatives whatever the queue size).

The queue is a ring buffer (``queue_ptr``) in the state_dict. :meth:`QGFaceContrast.enqueue` runs before the
loss (the current step's entries are in the queue, so in-batch negatives always exist) and all-gathers
the entries of every rank first (``torch.distributed``; a no-op in one process), so every rank holds the
same queue.

Deliberate differences from the original (its bugs are listed in :mod:`fiqa.methods.qgface`):
- masked cosines are removed from the softmax (``-inf``), not set to 0 (which keeps each masked entry
  as a negative at cosine 0, so the loss depends on how many same-class entries the queue holds);
- the own-views mask is by sample index (the original's ``mask_same_class=False`` branch is broken);
- empty slots of a queue not yet full are no negatives (the original starts from a full buffer);
- ``detach_hq`` stops the gradient through the HQ view everywhere in this loss (the original's
  ``detach_pos`` is not specified for the symmetric rows); only a static positive margin is offered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from fiqa.heads.adaface import AdaFaceHead
from fiqa.heads.partial_fc import all_gather_rows, gather_sizes

GATES = ("sgn", "cos", "linear")
SELECTS = ("low", "mean", "high")


def quality_from_ms(ms: torch.Tensor) -> torch.Tensor:
    """``q = (ms + 1) / 2`` in [0, 1]."""
    return (ms.float() + 1.0) / 2.0


def classification_gate(ms: torch.Tensor, quality_scale: float, s: float) -> torch.Tensor | None:
    """``sigmoid(2 s (q - qs))`` per sample (B,), or None when ``qs == 0`` (no gate)."""
    if quality_scale <= 0:
        return None
    return torch.sigmoid(2.0 * s * (quality_from_ms(ms) - quality_scale))


class QGFaceHead(AdaFaceHead):
    """AdaFace's head with QGFace's quality gate on the logits (:func:`classification_gate`).

    ``quality_scale`` (qs) is set each epoch by the method (its warm-up); 0 = plain AdaFace.

    ``debias_stats`` (the fix of the original's statistics starting at 0 / 0): the EMA of the norm
    statistics is bias-corrected as Adam's moments, i.e. update ``t`` (buffer ``num_updates``) uses the
    rate ``a_t = a / (1 - (1 - a)^t)``: the first batch sets the statistics (``a_1 = 1``), later ones are
    averaged with weights that tend to AdaFace's ``a``. So ``q`` partitions by the data's own norm
    distribution from the first step, whatever the backbone's norm scale; the start values
    (``init_mean`` / ``init_std``) only matter with ``debias_stats=False`` (AdaFace's fixed 20 / 100,
    whose slow decay at ``a = 0.01`` leaves ``ms`` near 0, i.e. every ``q`` near 0.5, for hundreds of steps).
    """

    # the contrast reads every class proxy W[label] and the gate weights each sample's loss: not sharded
    supports_partial_fc = False

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        s: float = 64.0,
        margin: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
        eps: float = 1e-3,
        init_mean: float = 20.0,
        init_std: float = 100.0,
        debias_stats: bool = True,
        quality_scale: float = 0.0,
        fc: str = "full",
        sample_rate: float = 1.0,
    ):
        super().__init__(num_classes, embedding_dim, s, margin, h, t_alpha, eps, init_mean, init_std, fc, sample_rate)
        if not 0.0 <= quality_scale <= 1.0:
            raise ValueError(f"quality_scale must be in [0, 1], got {quality_scale}")
        self.quality_scale, self.debias_stats = float(quality_scale), bool(debias_stats)
        self.register_buffer("num_updates", torch.zeros(1))

    @torch.no_grad()
    def update_statistics(self, norm: torch.Tensor) -> None:
        """AdaFace's EMA, bias-corrected with ``debias_stats`` (see the class docstring)."""
        if not self.debias_stats:
            return super().update_statistics(norm)
        self.num_updates += 1
        a = self.t_alpha
        rate = a / (1 - (1 - a) ** self.num_updates) if a > 0 else torch.zeros_like(self.num_updates)
        self.batch_mean.mul_(1 - rate).add_(rate * norm.mean())
        if norm.numel() > 1:
            self.batch_std.mul_(1 - rate).add_(rate * norm.std())

    def logit_gate(self, ms: torch.Tensor) -> torch.Tensor | None:
        return classification_gate(ms, self.quality_scale, self.s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, debias_stats={self.debias_stats}, quality_scale={self.quality_scale}"


def pair_quality(q_a: torch.Tensor, q_b: torch.Tensor, select: str = "low") -> torch.Tensor:
    """The quality of a pair of views: min (``low``), mean or max of theirs."""
    if select == "low":
        return torch.minimum(q_a, q_b)
    if select == "mean":
        return (q_a + q_b) / 2
    if select == "high":
        return torch.maximum(q_a, q_b)
    raise ValueError(f"method.quality_select={select!r} is not valid; choose one of {list(SELECTS)}")


def contrastive_gate(t: torch.Tensor, quality_scale: float, kind: str = "sgn") -> torch.Tensor:
    """Per-pair factor on the contrastive logits: ``t < qs ? g1(t) : 0``; all ones when ``qs == 0``."""
    if kind not in GATES:
        raise ValueError(f"method.gate={kind!r} is not valid; choose one of {list(GATES)}")
    t = t.float()
    if quality_scale <= 0:
        return torch.ones_like(t)
    if kind == "sgn":
        low = torch.ones_like(t)
    elif kind == "cos":
        low = (1 - torch.cos(math.pi * t / quality_scale)) / 2
    else:
        low = t / quality_scale
    return torch.where(t < quality_scale, low, torch.zeros_like(t))


def rescale_factor(num_negatives: int, reference: int = 128) -> float:
    """``log(reference + 1) / log(K + 1)``: the chance-level loss of K negatives brought to that of
    ``reference`` negatives; 1 when there is no negative (or ``reference`` is 0: no rescaling)."""
    if not reference or num_negatives < 1:
        return 1.0
    return math.log(reference + 1) / math.log(num_negatives + 1)


def proxy_update(entries: torch.Tensor, proxy_old: torch.Tensor, proxy_now: torch.Tensor) -> torch.Tensor:
    """``e + ||e|| / ||W_old|| * (W_now - W_old)`` row-wise: a stored embedding moved with its class proxy."""
    scale = entries.norm(dim=1, keepdim=True) / proxy_old.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return entries + scale * (proxy_now - proxy_old)


def contrastive_loss(
    lq: torch.Tensor,
    hq: torch.Tensor,
    queue: torch.Tensor,
    labels: torch.Tensor,
    queue_labels: torch.Tensor,
    indices: torch.Tensor,
    queue_indices: torch.Tensor,
    gate: torch.Tensor,
    s: float,
    margin: float = 0.0,
    symmetric: bool = True,
    mask_same_class: bool = True,
    detach_hq: bool = False,
    rescale_reference: int = 128,
) -> torch.Tensor:
    """QGFace's contrastive loss (module docstring, steps 2-4) for B pairs ``(lq_i, hq_i)`` of sample
    ``indices`` / ``labels`` against ``queue`` (K, D) (any norm; cosines are used), per-pair ``gate`` (B,)."""
    q = F.normalize(lq.float(), dim=1)
    k = F.normalize(hq.float(), dim=1)
    if detach_hq:
        k = k.detach()
    keys = F.normalize(queue.float(), dim=1)
    anchors, partners = (torch.cat([q, k]), torch.cat([k, q])) if symmetric else (q, k)
    reps = 2 if symmetric else 1
    row_labels, row_indices, row_gate = labels.repeat(reps), indices.repeat(reps), gate.float().repeat(reps)
    pos = (anchors * partners).sum(1, keepdim=True).clamp(-1, 1) - margin
    neg = (anchors @ keys.t()).clamp(-1, 1)
    logits = s * row_gate.view(-1, 1) * torch.cat([pos, neg], dim=1)
    mask = row_indices.view(-1, 1) == queue_indices.view(1, -1)
    if mask_same_class:
        mask |= row_labels.view(-1, 1) == queue_labels.view(1, -1)
    logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(mask, float("-inf"))], dim=1)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target) * rescale_factor(queue.shape[0], rescale_reference)


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """The rows of ``x`` from every rank, in rank order, without gradient (``torch.distributed``; ``x``
    itself in one process). Ranks may hold different numbers of rows."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return all_gather_rows(x, gather_sizes(x.shape[0], x.device))


@dataclass
class ContrastOutput:
    loss: torch.Tensor  # scalar, rescaled
    gate: torch.Tensor  # (B,) per-pair factor on the logits
    num_negatives: int  # filled queue entries (before masking)


class QGFaceContrast(nn.Module):
    """QGFace's contrastive head with its proxy-updated queue (module docstring).

    Buffers (in checkpoints): ``queue_embedding`` (K, D) unit vectors, ``queue_proxy`` (K, D) the class
    proxies at enqueue time, ``queue_label`` / ``queue_index`` (K,) (-1 = empty slot), ``queue_ptr`` (1,)
    the next slot. ``quality_scale`` (qs) is set by the method each epoch.
    """

    def __init__(
        self,
        embedding_dim: int,
        queue_size: int = 4096,
        s: float = 16.0,
        gate: str = "sgn",
        quality_select: str = "low",
        symmetric: bool = True,
        mask_same_class: bool = True,
        detach_hq: bool = False,
        margin: float = 0.0,
        rescale_reference: int = 128,
        proxy_update: bool = True,
        gather: bool = True,
        quality_scale: float = 0.0,
    ):
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"method.queue_size must be >= 1, got {queue_size}")
        if gate not in GATES:
            raise ValueError(f"method.gate={gate!r} is not valid; choose one of {list(GATES)}")
        if quality_select not in SELECTS:
            raise ValueError(f"method.quality_select={quality_select!r} is not valid; choose one of {list(SELECTS)}")
        if s <= 0:
            raise ValueError(f"method.contrast_s must be > 0, got {s}")
        self.queue_size, self.s, self.gate, self.quality_select = int(queue_size), float(s), gate, quality_select
        self.symmetric, self.mask_same_class, self.detach_hq = bool(symmetric), bool(mask_same_class), bool(detach_hq)
        self.margin, self.rescale_reference = float(margin), int(rescale_reference or 0)
        self.proxy_update, self.gather, self.quality_scale = bool(proxy_update), bool(gather), float(quality_scale)
        k, d = self.queue_size, int(embedding_dim)
        self.register_buffer("queue_embedding", torch.zeros(k, d))
        self.register_buffer("queue_proxy", torch.zeros(k, d))
        self.register_buffer("queue_label", torch.full((k,), -1, dtype=torch.long))
        self.register_buffer("queue_index", torch.full((k,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def filled(self) -> int:
        return int((self.queue_label >= 0).sum())

    @torch.no_grad()
    def enqueue(self, embedding: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, indices: torch.Tensor):
        """Store the (gathered) rows at ``queue_ptr`` onwards, wrapping around; more rows than the queue
        holds: the last ``K`` are kept. Embeddings are stored L2-normalised, proxies as given."""
        emb = F.normalize(embedding.detach().float(), dim=1)
        prox, lab, idx = proxies.detach().float(), labels.detach().long(), indices.detach().long()
        if self.gather:
            emb, prox = all_gather_cat(emb), all_gather_cat(prox)
            lab, idx = all_gather_cat(torch.stack([lab, idx], dim=1)).unbind(1)
        n, k, ptr = emb.shape[0], self.queue_size, int(self.queue_ptr)
        keep = min(n, k)
        slots = (ptr + n - keep + torch.arange(keep, device=emb.device)) % k
        self.queue_embedding[slots] = emb[n - keep :].to(self.queue_embedding)
        self.queue_proxy[slots] = prox[n - keep :].to(self.queue_proxy)
        self.queue_label[slots] = lab[n - keep :].to(self.queue_label)
        self.queue_index[slots] = idx[n - keep :].to(self.queue_index)
        self.queue_ptr.fill_((ptr + n) % k)

    def entries(self, class_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The filled entries ``(embeddings, labels, indices)``, proxy-updated with ``class_weight`` (C, D)."""
        valid = self.queue_label >= 0
        emb, lab, idx = self.queue_embedding[valid], self.queue_label[valid], self.queue_index[valid]
        if self.proxy_update and class_weight is not None and len(lab):
            emb = proxy_update(emb, self.queue_proxy[valid], class_weight.detach().float()[lab])
        return emb, lab, idx

    def forward(
        self,
        lq: torch.Tensor,
        hq: torch.Tensor,
        ms_lq: torch.Tensor,
        ms_hq: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor,
        class_weight: torch.Tensor | None = None,
    ) -> ContrastOutput:
        queue, queue_labels, queue_indices = self.entries(class_weight)
        t = pair_quality(quality_from_ms(ms_lq), quality_from_ms(ms_hq), self.quality_select)
        gate = contrastive_gate(t, self.quality_scale, self.gate)
        loss = contrastive_loss(
            lq,
            hq,
            queue,
            labels,
            queue_labels,
            indices,
            queue_indices,
            gate,
            self.s,
            self.margin,
            self.symmetric,
            self.mask_same_class,
            self.detach_hq,
            self.rescale_reference,
        )
        return ContrastOutput(loss=loss, gate=gate, num_negatives=int(queue.shape[0]))

    def extra_repr(self) -> str:
        return (
            f"queue_size={self.queue_size}, s={self.s}, gate={self.gate}, quality_select={self.quality_select}, "
            f"symmetric={self.symmetric}, mask_same_class={self.mask_same_class}, proxy_update={self.proxy_update}"
        )


__all__ = [
    "ContrastOutput",
    "QGFaceContrast",
    "QGFaceHead",
    "all_gather_cat",
    "classification_gate",
    "contrastive_gate",
    "contrastive_loss",
    "pair_quality",
    "proxy_update",
    "quality_from_ms",
    "rescale_factor",
]
