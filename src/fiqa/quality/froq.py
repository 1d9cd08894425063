"""FROQ (Babnik, Jain, Peer, Struc, IJCB 2025): quality from the activation norms of a frozen FR model.

A small calibration set with pseudo-quality labels (from another FIQA method) picks the layers of the
FR model whose per-image activation norm ranks the images as the labels do (Spearman's rho); at
inference the quality is the mean of those layers' norms, read by forward hooks during the one
ordinary forward pass. No training, no change of the model.

Facts of the original (``LSIbabnikz/FROQ``, read at commit 965a981; code written here from scratch):

* candidates -- *every* module of the FR model: ``list(fr_model.named_modules())[1:]`` (the root
  excluded; containers, convolutions, BN, PReLU, blocks, the output layer alike)
  [observer/initialization.py, ``evaluate_single_layers``; the same list in observer/inference.py];
* statistic -- the hook keeps the module's output (the last call of a module wins: a dict keyed by
  layer, overwritten); the per-image value is the L2 (Frobenius) norm of the flattened output,
  ``torch.linalg.norm(out.reshape(B, -1), dim=1)``; one number per layer and image, not per channel
  [observer/initialization.py; observer/inference.py]. A module that was not called gets ``randn``
  values (hence a near-zero rho) [initialization.py]; here such a module is simply not a candidate;
* single-layer utility -- ``spearmanr(layer norms, pseudo labels)`` over the calibration set
  [initialization.py, ``evaluate_single_layers``];
* greedy set -- the ``keep_top_n_layers = 10`` layers of highest utility (``argsort(..., descending)``:
  signed rho, so a layer whose norm falls with quality is never chosen; no sign handling); the set starts
  with the best of them, then adds, one at a time, the remaining layer that maximises the Spearman of the
  set's aggregate, until all 10 are in; the rho after each step is recorded
  [initialization.py, ``build_final_layer_set``, ``calc_corr``];
* final set -- the prefix of the greedy order up to the step of highest rho (first maximum)
  [observer/inference.py, ``intermediate_set_correlations.index(max(...))``];
* aggregation -- the plain mean of the chosen layers' raw norms, no normalisation, no z-scoring
  [initialization.py, ``calc_corr``; inference.py]; higher = better (the labels are similarities);
* pseudo labels -- their "auxiliary FIQA" (baselineFIQA/): the mean of three cosine similarities between
  the embedding of the image and of perturbed copies: horizontal flip; Gaussian noise
  ``(1 - a) x + a n`` with 10 fixed ``randn`` masks and ``alphas: [1e-3]`` (mean over masks x alphas);
  grid occlusion, one ``mpx = 14`` px square set to -1 (black, in model input space) at a time over the
  112 px image (8 x 8 = 64 copies, mean) [baselineFIQA/README.md, main.py (``1/3 (flip + noise +
  occlusion)``), noise_component.py, occlusion_component.py, baseline_FIQA_config.yaml];
* calibration set -- ``calibration_dataset.zip`` (``id_XXXX/*.jpg``, from Glint360K by the class names
  ``Glint360KSubset``), a 1.54 MB Git-LFS file [README.md; observer/initialization_config.yaml]. Its
  image count is not stated in the repository (the zip is LFS-only); at a few KB per 112x112 JPEG it
  holds on the order of several hundred to a thousand images -- *not established*;
* FR model of their scripts: AdaFace IR (``face_recognition_model/adaface_config.yaml``: BGR input,
  ``(x - 0.5) / 0.5``); batch size 8 for calibration, 64 for inference.

Here: :func:`calibrate` does the selection in *one* pass over the calibration set (the hooks reduce each
output to its norms at once, so nothing is kept but an (N, layers) matrix; the original's two passes give
the same numbers), then :func:`select_layers` is pure numpy. Options beyond the original: ``aggregate=
"zscore"`` (each layer z-scored with its calibration mean/std and multiplied by the sign of its rho, the
candidates ranked by |rho|, so layers whose norm falls with quality count too), ``n_layers`` (a fixed set
size instead of the best prefix) and ``candidates`` (``fnmatch`` patterns over module names instead of
every module). The defaults are the original's: ``aggregate="mean"``, ``top_k=10``, ``n_layers=None``.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor, nn

__all__ = [
    "FORMAT",
    "VERSION",
    "AGGREGATES",
    "Calibration",
    "NormObserver",
    "aggregate",
    "calibrate",
    "candidate_modules",
    "layer_norms",
    "score",
    "select_layers",
    "spearman_columns",
]

FORMAT = "fiqa-froq-calibration"
VERSION = 1
AGGREGATES = ("mean", "zscore")


# ---------------------------------------------------------------------------------------------------------------
# the selection (pure numpy)


@dataclass
class Calibration:
    """The observer: which layers, how their norms are combined, and what the calibration measured.

    ``quality = mean_l sign_l * (norm_l - mean_l) / std_l`` over ``layers`` (for ``aggregate="mean"``,
    the original's, ``mean = 0``, ``std = 1``, ``sign = +1``: the mean of the raw norms)."""

    layers: list[str]  # the chosen modules (names relative to the observed module), in greedy order
    mean: list[float]
    std: list[float]
    sign: list[float]
    aggregate: str = "mean"
    greedy_order: list[str] = field(default_factory=list)  # all top_k layers in the order the greedy added them
    step_spearman: list[float] = field(default_factory=list)  # rho of the aggregate after each greedy step
    layer_spearman: dict[str, float] = field(default_factory=dict)  # rho of every candidate alone (NaN dropped)
    n_images: int = 0

    @property
    def spearman(self) -> float:
        """The calibration-set rho of the chosen set."""
        return float(self.step_spearman[len(self.layers) - 1]) if self.step_spearman else float("nan")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Calibration:
        c = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        n = len(c.layers)
        if not n or not (len(c.mean) == len(c.std) == len(c.sign) == n) or c.aggregate not in AGGREGATES:
            raise ValueError(f"not a valid FROQ calibration: {len(c.layers)} layers, aggregate={c.aggregate!r}")
        return c


def spearman_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of every column of ``x`` (N, L) with ``y`` (N,) (average ranks for ties, as
    ``scipy.stats.spearmanr``); NaN where a column (or ``y``) is constant."""
    x = np.asarray(x, np.float64)
    x = x[:, None] if x.ndim == 1 else x
    rx = rankdata(x, axis=0)
    ry = rankdata(np.asarray(y, np.float64))
    rx -= rx.mean(0)
    ry -= ry.mean()
    den = np.sqrt((rx**2).sum(0) * (ry**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry[:, None]).sum(0) / den
    return np.where(den > 0, np.clip(rho, -1.0, 1.0), np.nan)


def aggregate(norms: np.ndarray | Tensor, mean, std, sign):
    """``mean_l sign_l (norms[:, l] - mean_l) / std_l`` for norms (N, L) (numpy or torch alike)."""
    if isinstance(norms, Tensor):
        kw = {"dtype": norms.dtype, "device": norms.device}
        m, s, g = (torch.as_tensor(v, **kw) for v in (mean, std, sign))
    else:
        m, s, g = (np.asarray(v, np.float64) for v in (mean, std, sign))
    return (g * (norms - m) / s).mean(1)


def select_layers(
    norms: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    top_k: int = 10,
    n_layers: int | None = None,
    aggregate_kind: str = "mean",
) -> Calibration:
    """FROQ's layer selection on the per-image norms (N, L) of ``names`` and the pseudo labels (N,).

    Single-layer rho; the ``top_k`` best (signed rho for ``"mean"``, |rho| for ``"zscore"``); greedy: start
    with the best, add the remaining one that maximises the rho of the aggregate (first in rank order on
    ties), until all ``top_k`` are in; keep the prefix of highest rho (first maximum), or the first
    ``n_layers`` when given."""
    if aggregate_kind not in AGGREGATES:
        raise ValueError(f"quality.aggregate={aggregate_kind!r} is not valid; choose one of {list(AGGREGATES)}")
    norms = np.asarray(norms, np.float64)
    labels = np.asarray(labels, np.float64).reshape(-1)
    if norms.ndim != 2 or norms.shape != (len(labels), len(names)):
        raise ValueError(f"norms must be (N={len(labels)}, L={len(names)}), got {norms.shape}")
    if len(labels) < 3 or not np.all(np.isfinite(labels)) or np.ptp(labels) == 0:
        raise ValueError(f"FROQ needs >= 3 finite, not all equal pseudo labels, got {len(labels)} ({labels[:5]} ...)")
    if int(top_k) < 1 or (n_layers is not None and int(n_layers) < 1):
        raise ValueError(f"quality.top_k and quality.n_layers must be >= 1, got {top_k} and {n_layers}")
    rho = spearman_columns(norms, labels)
    valid = np.flatnonzero(np.isfinite(rho) & np.all(np.isfinite(norms), 0))
    if not len(valid):
        raise ValueError(f"no candidate layer has a finite Spearman with the labels ({len(names)} candidates)")
    zscore = aggregate_kind == "zscore"
    utility = np.abs(rho[valid]) if zscore else rho[valid]
    top = valid[np.argsort(-utility, kind="stable")[: int(top_k)]]
    if zscore:
        mu, sd, sg = norms.mean(0), norms.std(0), np.sign(rho)
        sd = np.where(sd > 0, sd, 1.0)
    else:
        mu, sd, sg = np.zeros(len(names)), np.ones(len(names)), np.ones(len(names))
    values = sg * (norms - mu) / sd  # (N, L): the per-layer terms of the aggregate

    chosen = [int(top[0])]
    steps = [float(spearman_columns(values[:, chosen].mean(1), labels)[0])]
    left = [int(i) for i in top[1:]]
    total = values[:, chosen].sum(1)
    while left:
        trial = (total[:, None] + values[:, left]) / (len(chosen) + 1)
        r = spearman_columns(trial, labels)
        r = np.where(np.isfinite(r), r, -np.inf)
        j = int(np.argmax(r))  # first maximum = first in rank order
        chosen.append(left.pop(j))
        steps.append(float(r[j]))
        total = total + values[:, chosen[-1]]
    keep = int(np.argmax(steps)) + 1 if n_layers is None else min(int(n_layers), len(chosen))
    sel = chosen[:keep]
    return Calibration(
        layers=[names[i] for i in sel],
        mean=[float(mu[i]) for i in sel],
        std=[float(sd[i]) for i in sel],
        sign=[float(sg[i]) for i in sel],
        aggregate=aggregate_kind,
        greedy_order=[names[i] for i in chosen],
        step_spearman=steps,
        layer_spearman={names[i]: float(rho[i]) for i in valid},
        n_images=len(labels),
    )


# ---------------------------------------------------------------------------------------------------------------
# observing a model (torch)


def candidate_modules(module: nn.Module, candidates: str | Sequence[str] = "all") -> list[str]:
    """Names of the candidate modules of ``module``: ``"all"`` = every named submodule, root excluded (the
    original's rule, any backbone); else a list of ``fnmatch`` patterns over the names (e.g.
    ``["layer*.*", "bn2", "features"]``: every iResNet block, the last BN and the embedding)."""
    names = [n for n, _ in module.named_modules() if n]
    if isinstance(candidates, str) and candidates == "all":
        return names
    patterns = [candidates] if isinstance(candidates, str) else list(candidates)
    out = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not out:
        raise ValueError(f"quality.candidates={patterns!r} matches no module of {type(module).__name__}")
    return out


class NormObserver(contextlib.AbstractContextManager):
    """Forward hooks on ``names`` of ``module`` that reduce each output to its per-image L2 norm (fp32).

    ``norms`` maps a name to the (B,) norms of its last call in the current forward; outputs that are not
    a tensor with the batch as first dimension are ignored (so that module is not observed)."""

    def __init__(self, module: nn.Module, names: Iterable[str]):
        self.module, self.names = module, list(names)
        self.norms: dict[str, Tensor] = {}
        self.batch: int | None = None
        self._handles: list = []

    def __enter__(self) -> NormObserver:
        mods = dict(self.module.named_modules())
        missing = [n for n in self.names if n not in mods]
        if missing:
            raise KeyError(f"{type(self.module).__name__} has no module {missing[:5]} (calibrated on another model?)")
        self._handles = [mods[n].register_forward_hook(self._hook(n)) for n in self.names]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str) -> Callable:
        def hook(_module, _inputs, output):
            if isinstance(output, Tensor) and output.dim() >= 1 and output.shape[0] == self.batch:
                dims = tuple(range(1, output.dim()))
                self.norms[name] = (
                    torch.linalg.vector_norm(output.float(), dim=dims) if dims else output.float().abs()
                ).detach()

        return hook

    def run(self, fn: Callable[[Tensor], object], images: Tensor):
        """``fn(images)`` with the hooks on; returns its result (the norms are in ``self.norms``)."""
        self.norms, self.batch = {}, int(images.shape[0])
        return fn(images)

    def matrix(self, names: Sequence[str]) -> Tensor:
        """(B, len(names)) norms of the last run; an error names a layer that produced none."""
        missing = [n for n in names if n not in self.norms]
        if missing:
            raise RuntimeError(f"FROQ: layers {missing[:5]} produced no (batch, ...) tensor in this forward")
        return torch.stack([self.norms[n] for n in names], 1)


def _observed(model: nn.Module) -> nn.Module:
    """The module whose layers are observed: a FaceModule's backbone, else the module itself."""
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model


def _forward_fn(model: nn.Module) -> Callable[[Tensor], object]:
    return getattr(model, "embed", None) or model


def _batches(images, convention: Mapping | None, batch_size: int) -> Iterable[Tensor]:
    """Model-input float batches from a float tensor (N,3,H,W) (already model input) or a reader of
    ``(uint8 HxWx3 RGB, label, meta)`` (converted with ``convention``)."""
    if isinstance(images, Tensor):
        for i in range(0, len(images), batch_size):
            yield images[i : i + batch_size]
        return
    if convention is None:
        raise ValueError("a reader of uint8 images needs the model's input convention (color, mean, std)")
    from fiqa.quality.embed import to_input

    for i in range(0, len(images), batch_size):
        chunk = np.stack([np.asarray(images[j][0]) for j in range(i, min(i + batch_size, len(images)))])
        yield to_input(torch.from_numpy(chunk), convention)


def _device_of(module: nn.Module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_no_grad(module: nn.Module):
    was = module.training
    module.eval()
    try:
        with contextlib.ExitStack() as stack:
            if not torch.is_inference_mode_enabled():
                stack.enter_context(torch.no_grad())
            yield
    finally:
        module.train(was)


def layer_norms(
    model: nn.Module,
    images,
    names: Sequence[str] | None = None,
    convention: Mapping | None = None,
    batch_size: int = 64,
    on_batch: Callable[[Tensor, object], None] | None = None,
) -> tuple[list[str], np.ndarray]:
    """``(names, norms (N, L))``: per-image activation norms of the candidate modules over ``images`` (one
    pass; eval mode, no grad). Names whose module never gave a (B, ...) tensor are dropped.
    ``on_batch(inputs, output)`` sees every batch and the model's output (to compute labels alongside)."""
    observed = _observed(model)
    names = list(candidate_modules(observed) if names is None else names)
    fn, device = _forward_fn(model), _device_of(observed)
    cols: dict[str, list[np.ndarray]] = {n: [] for n in names}
    seen = 0
    with _eval_no_grad(model), NormObserver(observed, names) as obs:
        for x in _batches(images, convention, batch_size):
            x = x.to(device)
            out = obs.run(fn, x)
            for n in names:
                v = obs.norms.get(n)
                cols[n].append(v.cpu().numpy() if v is not None else np.full(len(x), np.nan))
            if on_batch is not None:
                on_batch(x, out)
            seen += len(x)
    if not seen:
        raise ValueError("FROQ calibration: no images")
    kept = [n for n in names if not np.isnan(np.concatenate(cols[n])).any()]
    return kept, np.stack([np.concatenate(cols[n]) for n in kept], 1) if kept else np.zeros((seen, 0))


def calibrate(
    model: nn.Module,
    images,
    labels: np.ndarray | Callable[[Tensor, object], Tensor],
    n_layers: int | None = None,
    top_k: int = 10,
    aggregate_kind: str = "mean",
    candidates: str | Sequence[str] = "all",
    convention: Mapping | None = None,
    batch_size: int = 64,
) -> Calibration:
    """Choose the observed layers of ``model`` (a FaceModule or a plain module) on ``images`` (model-input
    tensor (N,3,H,W), or a uint8 RGB reader with ``convention``) with pseudo ``labels``: an array (N,), or
    a callable ``(inputs, model output) -> (B,)`` labels computed batch by batch in the same pass."""
    names = candidate_modules(_observed(model), candidates)
    got: list[np.ndarray] = []
    hook = None
    if callable(labels):

        def hook(x, out):
            got.append(np.asarray(torch.as_tensor(labels(x, out)).float().view(-1).cpu().numpy(), np.float64))

    names, norms = layer_norms(model, images, names, convention, batch_size, hook)
    y = np.concatenate(got) if callable(labels) else np.asarray(labels, np.float64).reshape(-1)
    if len(y) != len(norms):
        raise ValueError(f"FROQ calibration: {len(y)} labels for {len(norms)} images")
    return select_layers(norms, y, names, top_k, n_layers, aggregate_kind)


def score(model: nn.Module, images: Tensor, calibration: Calibration) -> Tensor:
    """FROQ quality (B,) of model-input ``images`` (higher = better): one forward with hooks on the
    calibrated layers (eval mode is the caller's; no grad)."""
    return observe(model, images, calibration)[1]


def observe(model: nn.Module, images: Tensor, calibration: Calibration) -> tuple[object, Tensor]:
    """``(model output, quality (B,))`` from one forward of ``model`` with hooks on the calibrated layers."""
    with contextlib.ExitStack() as stack:
        if not torch.is_inference_mode_enabled():
            stack.enter_context(torch.no_grad())
        with NormObserver(_observed(model), calibration.layers) as obs:
            out = obs.run(_forward_fn(model), images)
            norms = obs.matrix(calibration.layers)
    return out, aggregate(norms, calibration.mean, calibration.std, calibration.sign)
