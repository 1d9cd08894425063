"""SDD-FIQA (Ou et al., CVPR 2021): quality pseudo-labels from the Similarity Distribution Distance.

The pseudo-label of image ``x`` is the Wasserstein distance between two empirical distributions of cosine
similarities computed with a trained FR model: ``S_P`` (``x`` against ``m`` other images of its identity)
and ``S_N`` (``x`` against ``m`` images of other identities). A high-quality image is close to its own
class and far from the others, so the distance is large. Sampling is repeated ``K`` times and the labels
are averaged. Facts (Tencent/TFace, branch ``quality``, ``generate_pseudo_labels/gen_pseudo_labels.py``;
read in the mirror acid9reen/TFace, same file):

* ``m = 24`` positives (``gen_samepeople_Similarity(..., fix_num=24)``: the other images of the identity,
  shuffled, the first ``min(24, n_c - 1)``, i.e. without replacement) and ``m = 24`` negatives
  (``gen_diffpeople_Similarity(..., fix_num=24)``: random images of other identities, no repetition);
* ``WD = scipy.stats.wasserstein_distance(S_P, S_N)`` (``gen_distance``), the unsigned 1-D W1;
* ``K = 12`` repetitions (``for i in range(12)`` in ``__main__``); each repetition's distances are min-max
  normalised to [0, 100] over the set (``norm_labels``) and the K results averaged.

:func:`pseudo_labels` does exactly that, vectorised: the images are grouped by identity (one sort), the
positives of a chunk of images are drawn without replacement by the top-k of random keys over their
class, the negatives by uniform offsets that skip the image's own class (duplicates redrawn), the
similarities are one batched gather + dot product, and the W1 of every row is computed at once from the
sorted merged samples (:func:`wasserstein_rows`). Identities with a single image have no positives: their
label is NaN (the original asserts there are none; its fork skips them).

Cost (MS1MV2: N = 5.8M images, 85,742 identities, ~68 images each, D = 512). Memory: the unit embeddings on
the device, N x D x 4 B = 11.9 GB in float32 (``dtype=torch.float16``: 5.9 GB), plus per chunk the gathered
neighbours ``chunk x (n_pos + n_neg) x D`` (chunk 16384: 0.8 GB for the positives + 0.8 GB for the
negatives in float32) and the positive keys ``chunk x n_max`` (n_max, the largest class, ~600: 39 MB): ~15 GB
in all, which fits one 24 GB+ GPU. Time: per repetition N x 48 = 278M similarities (0.29 TFLOP) and 278M
gathered rows (570 GB read in float32); the gather is the cost (``aten::index``: 58 % of the CPU profile,
the batched dot products 14 %). Measured on a 2-core x86 CPU (N = 100k, D = 512, class size 68,
chunk 16384): 114 us per image and repetition, so MS1MV2 x 12 repetitions ~ 2.2 h on CPU. On a GPU the same
work is bound by the gather's memory traffic: at 0.5-2 TB/s effective, ~0.3-1 s per repetition plus the
sorts, i.e. about a minute for all 12 (an estimate: no GPU was available to measure it). The FR pass that
produces the embeddings (5.8M images through an R100, tens of minutes on one GPU) dominates either way.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["wasserstein_1d", "wasserstein_rows", "pseudo_labels"]

#: the paper's / the original code's numbers: m similarities per distribution, K repetitions
N_NEG, N_POS, REPEATS = 24, 24, 12


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
    """W1 between the empirical distributions of samples ``u`` and ``v`` (equal weights, any sizes):
    ``integral |F_u(x) - F_v(x)| dx``, evaluated exactly between the merged sorted samples."""
    u, v = np.asarray(u, np.float64).ravel(), np.asarray(v, np.float64).ravel()
    if u.size == 0 or v.size == 0:
        raise ValueError("wasserstein_1d needs two non-empty samples")
    x = np.concatenate([u, v])
    w = np.concatenate([np.full(u.size, 1.0 / u.size), np.full(v.size, -1.0 / v.size)])
    order = np.argsort(x, kind="stable")
    x, cdf_gap = x[order], np.cumsum(w[order])  # F_u - F_v right after each merged point
    return float(np.sum(np.abs(cdf_gap[:-1]) * np.diff(x)))


def wasserstein_rows(a: torch.Tensor, b: torch.Tensor, a_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise W1 between the samples ``a[i]`` (R, Ka) and ``b[i]`` (R, Kb). ``a_weight`` (R, Ka) of 0/1
    marks which entries of ``a`` are real (rows with fewer samples are padded); every row of ``a`` must
    hold at least one. Same formula as :func:`wasserstein_1d`: padded entries carry weight 0, so they only
    split an interval, never change the CDF gap."""
    a, b = a.double(), b.double()
    if a_weight is None:
        a_weight = torch.ones_like(a)
    a_weight = a_weight.double()
    ka = a_weight.sum(1, keepdim=True)
    x = torch.cat([a, b], 1)
    w = torch.cat([a_weight / ka, torch.full_like(b, -1.0 / b.shape[1])], 1)
    x, order = torch.sort(x, dim=1, stable=True)
    gap = torch.cumsum(torch.gather(w, 1, order), 1)
    return (gap[:, :-1].abs() * x.diff(dim=1)).sum(1)


def _draw_negatives(
    start: torch.Tensor, size: torch.Tensor, n: int, m: int, gen: torch.Generator, device
) -> torch.Tensor:
    """(R, m) distinct positions in identity-sorted order outside each row's class block
    [start, start + size). Rows with many others (> 4m): uniform offsets over the n - size others, the block
    skipped, duplicates redrawn (rare); rows with few: the top-m of random keys over all their others."""
    others = n - size
    out = torch.empty(start.shape[0], m, dtype=torch.long, device=device)
    few = others <= 4 * m
    if bool(few.any()):
        width = int(others[few].max())
        keys = torch.rand(int(few.sum()), width, generator=gen, device=device)
        slot = torch.arange(width, device=device).unsqueeze(0)
        keys = keys.masked_fill(slot >= others[few].unsqueeze(1), -1.0)
        off = torch.topk(keys, m, dim=1).indices
        out[few] = _skip_block(off, start[few], size[few])
    many = ~few
    if not bool(many.any()):
        return out
    st, sz, oth = start[many], size[many], others[many].unsqueeze(1).to(torch.float64)
    got = torch.empty(st.shape[0], m, dtype=torch.long, device=device)
    todo = torch.ones_like(got, dtype=torch.bool)
    for _ in range(100):
        u = torch.rand(got.shape, generator=gen, device=device, dtype=torch.float64)
        off = (u * oth).long().clamp_max(oth.long() - 1)
        got = torch.where(todo, _skip_block(off, st, sz), got)
        srt, idx = torch.sort(got, dim=1)
        dup = torch.zeros_like(todo)
        dup[:, 1:] = srt[:, 1:] == srt[:, :-1]
        todo = torch.zeros_like(todo).scatter(1, idx, dup)
        if not bool(todo.any()):
            out[many] = got
            return out
    raise RuntimeError("SDD negatives: could not draw distinct negatives")


def _skip_block(off: torch.Tensor, start: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Offsets among a row's others -> positions: those at or past the row's class block shift by its size."""
    return torch.where(off < start.unsqueeze(1), off, off + size.unsqueeze(1))


@torch.no_grad()
def pseudo_labels(
    embeddings,
    labels,
    n_neg: int = N_NEG,
    n_pos: int = N_POS,
    repeats: int = REPEATS,
    seed: int = 0,
    chunk: int = 16384,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    normalize: bool = True,
) -> np.ndarray:
    """SDD-FIQA quality pseudo-labels, higher = better (see the module docstring for the recipe).

    embeddings: (N, D) FR embeddings (any scale: cosine similarities are used).
    labels: (N,) identity of each image.
    n_neg, n_pos: similarities per distribution (the paper: m = 24 each; classes with fewer than
        ``n_pos + 1`` images use all their other images).
    repeats: K, the number of independent draws averaged (the paper: 12).
    chunk: images per batched step (memory: chunk x (n_pos + n_neg) x D gathered values).
    normalize: min-max each repetition to [0, 100] before averaging (the original); False: the mean raw W1.
    Returns float64 (N,); NaN for images whose identity has no other image."""
    emb = torch.as_tensor(np.asarray(embeddings))  # no copy of a float32 (N, D)
    lab = np.asarray(labels).ravel()
    n = emb.shape[0]
    if emb.ndim != 2 or lab.shape[0] != n:
        raise ValueError(f"embeddings must be (N, D) and labels (N,); got {tuple(emb.shape)} and {lab.shape}")
    if n_neg < 1 or n_pos < 1 or repeats < 1 or chunk < 1:
        raise ValueError(f"n_neg, n_pos, repeats and chunk must be >= 1; got {n_neg}, {n_pos}, {repeats}, {chunk}")
    device = torch.device(device)
    order = np.argsort(lab, kind="stable")  # identity-sorted positions -> original index
    _, first, counts = np.unique(lab[order], return_index=True, return_counts=True)
    if n - counts.max() < n_neg:
        raise ValueError(f"SDD: n_neg={n_neg} negatives need more than {n - counts.max()} images of other identities")
    cls_of_sorted = np.repeat(np.arange(first.size), counts)
    start_s = torch.as_tensor(first[cls_of_sorted], device=device)  # class block of each sorted position
    size_s = torch.as_tensor(counts[cls_of_sorted], device=device)
    unit = torch.nn.functional.normalize(emb[torch.as_tensor(order)].to(device=device, dtype=dtype), dim=1)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    total = torch.zeros(n, dtype=torch.float64, device=device)
    valid = size_s > 1
    for _ in range(int(repeats)):
        wd = torch.full((n,), float("nan"), dtype=torch.float64, device=device)
        for lo in range(0, n, chunk):
            pos_i = torch.arange(lo, min(lo + chunk, n), device=device)
            start, size = start_s[pos_i], size_s[pos_i]
            keep = size > 1
            if not bool(keep.any()):
                continue
            pos_i, start, size = pos_i[keep], start[keep], size[keep]
            # positives: k = min(n_pos, size - 1) distinct others of the class, by the top-k of random keys
            width = int(size.max()) - 1
            k = min(n_pos, width)
            keys = torch.rand(pos_i.shape[0], width, generator=gen, device=device)
            slot = torch.arange(width, device=device).unsqueeze(0)
            keys = keys.masked_fill(slot >= (size - 1).unsqueeze(1), -1.0)  # beyond the class: never picked
            top_keys, j = torch.topk(keys, k, dim=1)
            own = (pos_i - start).unsqueeze(1)
            pos = start.unsqueeze(1) + torch.where(j < own, j, j + 1)  # skip the image itself
            pos_w = (top_keys >= 0).to(torch.float64)
            neg = _draw_negatives(start, size, n, int(n_neg), gen, device)
            me = unit[pos_i].unsqueeze(2)
            s_pos = torch.bmm(unit[pos], me).squeeze(2).double()
            s_neg = torch.bmm(unit[neg], me).squeeze(2).double()
            wd[pos_i] = wasserstein_rows(s_pos, s_neg, pos_w)
        if normalize:
            v = wd[valid]
            lo_v, hi_v = v.min(), v.max()
            wd = (wd - lo_v) / (hi_v - lo_v).clamp_min(1e-12) * 100.0
        total += wd
    out = np.empty(n, np.float64)
    out[order] = (total / int(repeats)).cpu().numpy()
    return out
