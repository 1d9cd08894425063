"""FROQ's default pseudo labels for its calibration set: the original's auxiliary FIQA (the agreement of an
image's embedding with those of its flip, of noisy copies and of copies with one grid square occluded)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["auxiliary_labels"]


def auxiliary_labels(
    embed: Callable[[Tensor], Tensor],
    images: Tensor,
    mpx: int = 14,
    alphas: Sequence[float] = (1e-3,),
    n_noise: int = 10,
    fill: float = -1.0,
    seed: int = 0,
) -> Tensor:
    """The original's pseudo labels for model-input ``images`` (B,3,H,W): the mean of (i) cos(e(x),
    e(flip x)), (ii) the mean over ``n_noise`` fixed N(0,1) masks and ``alphas`` of cos(e(x), e((1-a) x +
    a n)), (iii) the mean over the (H/mpx)^2 grid squares of cos(e(x), e(x with that square = ``fill``))
    (``fill`` = the model-input value of black). ``embed``: images -> embeddings. Costs 2 + n_noise
    x len(alphas) + (H/mpx)^2 forwards per image (76 at 112 px, the original's settings)."""
    b, c, h, w = images.shape
    cos = nn.functional.cosine_similarity
    base = embed(images).float()
    flip = cos(base, embed(images.flip(3)).float(), dim=1)
    g = torch.Generator().manual_seed(int(seed))
    masks = torch.randn((int(n_noise), c, h, w), generator=g).to(images)
    noise = torch.stack([cos(base, embed((1 - a) * images + a * m).float(), dim=1) for a in alphas for m in masks])
    cells = [(i, j) for i in range(0, h - mpx + 1, mpx) for j in range(0, w - mpx + 1, mpx)]
    occ = []
    for i, j in cells:
        x = images.clone()
        x[:, :, i : i + mpx, j : j + mpx] = fill
        occ.append(cos(base, embed(x).float(), dim=1))
    return (flip + noise.mean(0) + torch.stack(occ).mean(0)) / 3.0
