"""A grid of training samples as the model sees them: decoded, augmented, normalised, then mapped back
to RGB for display (so a channel-order mistake shows as blue faces).

    python -m fiqa.data.preview data=mxrec data.root=/data/faces_emore augment=adaface out=grid.png
    python -m fiqa.data.preview method=crfiqa n=48 cols=8 seed=1 compare=false

Arguments are the same overrides as ``main.py`` (``data=``, ``augment=``, ``method=`` ... a method may
set ``data.color``) plus ``out=`` (PNG path, default ``preview.png``), ``n=`` (samples, 24), ``cols=`` (6),
``seed=`` (which samples and which augmentations, 0) and ``compare=`` (true: each decoded image next to
its model input).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fiqa.utils.logging import get_logger

log = get_logger(__name__)

OPTIONS = {"out": "preview.png", "n": "24", "cols": "6", "seed": "0", "compare": "true"}


def config_dir() -> Path:
    """The ``conf`` directory next to ``main.py`` (an editable install or a checkout)."""
    here = Path(__file__).resolve().parents[3] / "conf"
    return here if here.is_dir() else Path.cwd() / "conf"


def compose(overrides: Sequence[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path.cwd())
        cfg.hydra.runtime.cwd = str(Path.cwd())
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def sample_grid(cfg, n: int = 32, seed: int = 0) -> tuple[list, list, list, dict]:
    """``(decoded RGB images, model inputs shown as RGB, labels, info)`` of ``n`` training samples."""
    from fiqa.data.build import build_datamodule
    from fiqa.data.datamodule import FaceDataset
    from fiqa.data.transforms import to_uint8_image

    dm = build_datamodule(cfg.data, {}, with_train=True, augment_cfg=cfg.get("augment"))
    reader = dm.train_reader
    if reader is None:
        raise ValueError("the data config has no training reader (data.train)")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(reader), size=min(n, len(reader)), replace=False))
    ds = FaceDataset(reader, dm.train_transform)
    ds._rng, ds._rng_pid = np.random.default_rng(seed), __import__("os").getpid()
    t = dm.to_input
    decoded, shown, labels = [], [], []
    for i in idx:
        img, label, _ = reader[int(i)]
        sample = ds[int(i)]
        decoded.append(img)
        shown.append(to_uint8_image(sample["image"], t.color, t.mean, t.std))
        labels.append(int(label))
    mean = np.mean([d.reshape(-1, 3).mean(0) for d in decoded], axis=0)
    info = {"color": t.color, "mean": t.mean, "std": t.std, "decoded_rgb_mean": mean.round(1).tolist()}
    return decoded, shown, labels, info


def save_grid(out: Path, decoded, shown, labels, info, cols: int = 8, compare: bool = True, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = 2 if compare else 1
    n = len(shown)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols * per, figsize=(1.25 * cols * per, 1.45 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k in range(n):
        r, c = divmod(k, cols)
        cells = (
            [(decoded[k], f"{labels[k]} decoded"), (shown[k], "model input")]
            if compare
            else [(shown[k], str(labels[k]))]
        )
        for j, (img, text) in enumerate(cells):
            ax = axes[r][c * per + j]
            ax.imshow(img)
            ax.set_title(text, fontsize=6)
    fig.suptitle(
        f"{title}\nnetwork input: {info['color'].upper()}, (x - {info['mean']:g}) / {info['std']:g}; shown mapped "
        f"back to RGB. Mean decoded RGB {info['decoded_rgb_mean']} (faces: R > B)",
        fontsize=8,
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        raise SystemExit(0)
    opts, overrides = dict(OPTIONS), []
    for a in argv:
        key = a.split("=", 1)[0]
        if key in OPTIONS and "=" in a:
            opts[key] = a.split("=", 1)[1]
        else:
            overrides.append(a)
    cfg = compose(overrides)
    decoded, shown, labels, info = sample_grid(cfg, int(opts["n"]), int(opts["seed"]))
    title = " ".join(overrides) or "default config"
    out = save_grid(
        Path(opts["out"]), decoded, shown, labels, info, int(opts["cols"]), opts["compare"] == "true", title
    )
    r, _, b = info["decoded_rgb_mean"]
    if b > r:
        print(
            f"WARNING: the decoded images are bluer than red on average (R {r}, B {b}); faces are not. "
            f"The files may hold channel-swapped pixels (e.g. RGB arrays written with cv2.imwrite)."
        )
    print(out)
    return out


if __name__ == "__main__":
    main()
