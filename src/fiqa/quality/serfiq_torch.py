"""SER-FIQ on any :class:`~fiqa.backbones.base.TrunkTailBackbone` (reference §3.2, "spec for us").

The deterministic trunk runs once per image (eval mode, no grad, under whatever autocast the
caller set); only the stochastic tail ``dropout -> fc -> features`` is repeated T times, for the
whole batch at once (B*T rows, in chunks of at most ``chunk`` rows), in fp32 with autocast off:

* dropout is always on (masks drawn here, from ``generator``), the ``features`` BatchNorm always
  uses its running statistics, and no module's ``training`` flag is left changed;
* ``kind="dropout"`` zeroes single elements of the flat map, ``"dropout2d"`` whole channels of the
  (C, H, W) map, like ``F.dropout`` / ``F.dropout2d``: kept values are scaled by ``1 / (1 - p)``;
* the quality is the formula of :func:`fiqa.quality.serfiq.score`, per image, in float64.

This equals repeating the whole network T times with only its dropout active, because an iResNet
has one dropout layer, right before ``fc``. The masks depend on the generator's seed and device;
on CPU torch draws sequentially, so ``chunk`` changes nothing there (on CUDA it may change the draws).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fiqa.quality.serfiq import DEFAULT_ALPHA, DEFAULT_R

NORMALIZE = ("none", "sigmoid")
DEFAULT_CHUNK = 1024  # stochastic rows per fc call: 1024 x 25088 fp32 = 100 MB for an iResNet


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """``module.eval()`` for the block; afterwards every submodule gets its own flag back."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def resolve_dropout(backbone: nn.Module, p: float | None) -> tuple[float, str]:
    """``(p, kind)``: ``p`` defaults to the backbone's own dropout rate and must be in (0, 1)."""
    dropout = getattr(backbone, "dropout", None)
    backbone_p = getattr(dropout, "p", None)
    rate = backbone_p if p is None else p
    if rate is None or not 0.0 < float(rate) < 1.0:
        raise ValueError(
            f"SER-FIQ needs a dropout rate in (0, 1), got {rate!r}: quality.p={p!r} (None = the backbone's) and "
            f"the backbone's dropout (backbone.dropout) is {backbone_p!r}. Set quality.p, or use a backbone "
            f"trained with dropout (the reference nets use 0.4)."
        )
    kind = getattr(backbone, "dropout_kind", None) or ("dropout2d" if isinstance(dropout, nn.Dropout2d) else "dropout")
    if kind not in ("dropout", "dropout2d"):
        raise ValueError(f"backbone.dropout_kind={kind!r} is not supported; SER-FIQ knows 'dropout' and 'dropout2d'")
    if kind == "dropout2d" and getattr(backbone, "map_shape", None) is None:
        raise ValueError(f"{type(backbone).__name__} uses dropout2d but has no map_shape (C, H, W) to drop channels of")
    return float(rate), kind


def _dropout_noise(shape: tuple[int, ...], p: float, generator: torch.Generator | None, device) -> Tensor:
    """fp32 noise of ``shape``: 0 with probability p, else ``1 / (1 - p)`` (as F.dropout builds it)."""
    draw_device = generator.device if generator is not None else device
    noise = torch.rand(shape, generator=generator, device=draw_device, dtype=torch.float32)
    noise = noise.lt_(1.0 - p).div_(1.0 - p)
    return noise.to(device)


def _tail_fp32(backbone: nn.Module, x: Tensor) -> Tensor:
    """``fc`` then ``features`` on fp32 rows, with fp32 parameters and BatchNorm on running stats."""
    fc, features = backbone.fc, backbone.features
    if isinstance(fc, nn.Linear):
        x = F.linear(x, fc.weight.float(), None if fc.bias is None else fc.bias.float())
    else:
        x = fc(x)
    if isinstance(features, nn.modules.batchnorm._BatchNorm) and features.running_mean is not None:
        w, b = features.weight, features.bias
        return F.batch_norm(
            x,
            features.running_mean.float(),
            features.running_var.float(),
            None if w is None else w.float(),
            None if b is None else b.float(),
            training=False,
            eps=features.eps,
        )
    with _eval_mode(features):
        return features(x)


def _blocks(batch: int, T: int, chunk: int) -> Iterator[tuple[int, int, int, int]]:
    """(b0, b1, t0, t1) blocks of at most ``chunk`` rows, in row order b * T + t."""
    if T <= chunk:
        step = chunk // T
        for b0 in range(0, batch, step):
            yield b0, min(b0 + step, batch), 0, T
    else:
        for b0 in range(batch):
            for t0 in range(0, T, chunk):
                yield b0, b0 + 1, t0, min(t0 + chunk, T)


@torch.no_grad()
def stochastic_embeddings(
    backbone: nn.Module,
    feature_map: Tensor,
    T: int = 100,
    p: float | None = None,
    generator: torch.Generator | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> Tensor:
    """The T stochastic embeddings ``(B, T, D)`` (fp32) of a trunk output ``(B, feature_dim)``."""
    if T < 2 or chunk < 1:
        raise ValueError(f"SER-FIQ needs T >= 2 (quality.T) and chunk >= 1, got T={T}, chunk={chunk}")
    p, kind = resolve_dropout(backbone, p)
    batch = feature_map.shape[0]
    device = feature_map.device
    with torch.autocast(device.type, enabled=False), _eval_mode(backbone):
        x = feature_map.float()
        if kind == "dropout2d":
            x = x.reshape(batch, backbone.map_shape[0], -1)  # (B, C, H*W): one draw per channel
        out = None
        for b0, b1, t0, t1 in _blocks(batch, T, chunk):
            if kind == "dropout":
                rows = _dropout_noise((b1 - b0, t1 - t0, x.shape[1]), p, generator, device)
                rows.mul_(x[b0:b1, None])
            else:
                noise = _dropout_noise((b1 - b0, t1 - t0, x.shape[1], 1), p, generator, device)
                rows = noise * x[b0:b1, None]
            emb = _tail_fp32(backbone, rows.reshape((b1 - b0) * (t1 - t0), -1))
            if out is None:
                out = emb.new_empty(batch, T, emb.shape[1])
            out[b0:b1, t0:t1] = emb.view(b1 - b0, t1 - t0, -1)
    return out


def quality_from_embeddings(embeddings: Tensor) -> Tensor:
    """Per image ``2 / (1 + exp(mean_{i<j} ||x_i - x_j||))`` of L2-normalised rows, ``(B, T, D)`` -> ``(B,)``
    float64; the batched twin of :func:`fiqa.quality.serfiq.score`."""
    if embeddings.ndim != 3 or embeddings.shape[1] < 2:
        raise ValueError(f"need stochastic embeddings of shape (B, T, D) with T >= 2, got {tuple(embeddings.shape)}")
    with torch.autocast(embeddings.device.type, enabled=False):
        x = F.normalize(embeddings.double(), dim=-1)
        gram = x @ x.transpose(1, 2)
        sq = gram.diagonal(dim1=1, dim2=2)
        d2 = (sq[:, :, None] + sq[:, None, :] - 2.0 * gram).clamp_min_(0.0)
        T = x.shape[1]
        i, j = torch.triu_indices(T, T, offset=1, device=x.device)
        mean = d2[:, i, j].sqrt_().mean(dim=1)
        return 2.0 * torch.sigmoid(-mean)


@torch.no_grad()
def serfiq_quality(
    backbone: nn.Module,
    images: Tensor,
    T: int = 100,
    p: float | None = None,
    normalize: str = "none",
    alpha: float = DEFAULT_ALPHA,
    r: float = DEFAULT_R,
    generator: torch.Generator | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> Tensor:
    """SER-FIQ quality ``(B,)`` (fp32, on the images' device) of images ``(B, 3, H, W)``.

    ``p``: dropout rate of the stochastic passes (default: the backbone's ``dropout.p``; must be
    > 0). ``normalize="sigmoid"`` applies ``1 / (1 + exp(-alpha (q - r)))`` (display only; it keeps
    the ranking). ``generator`` seeds the dropout masks (default: torch's global RNG). ``chunk``
    bounds the rows (image x repetition) per fc call. See the module docstring.
    """
    if normalize not in NORMALIZE:
        raise ValueError(f"quality.normalize={normalize!r} is not valid; choose one of {list(NORMALIZE)}")
    resolve_dropout(backbone, p)  # fail before the trunk runs
    with _eval_mode(backbone):
        feature_map = backbone.trunk(images)
    q = quality_from_embeddings(stochastic_embeddings(backbone, feature_map, T, p, generator, chunk))
    if normalize == "sigmoid":
        q = torch.sigmoid(float(alpha) * (q - float(r)))
    return q.float()
