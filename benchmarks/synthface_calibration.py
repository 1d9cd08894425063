"""How much identity each SynthFace degradation kind destroys per level, for a trained checkpoint:
mean genuine cosine (clean image vs. degraded image of the same identity, held-out identities) and
mean predicted quality. Used to calibrate the level-to-parameter maps in fiqa.data.synthface.

    python benchmarks/synthface_calibration.py logs/train/runs/<time>/checkpoints/last.ckpt [--ids 100]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from omegaconf import OmegaConf

from fiqa.data.synthface import DEGRADATIONS, HELD_OUT_OFFSET, SynthFaceRenderer
from fiqa.data.transforms import ToModelInput
from fiqa.methods.loading import build_method, load_checkpoint

LEVELS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("ckpt")
    p.add_argument("--ids", type=int, default=100)
    a = p.parse_args()
    ck = load_checkpoint(a.ckpt)
    cfg = OmegaConf.create(ck["fiqa_config"])
    model = build_method(cfg, {})
    model.load_state_dict(ck["state_dict"])
    model.eval()
    render = SynthFaceRenderer(cfg.data.train.seed)
    to_input = ToModelInput(cfg.data.color)
    ids = np.arange(a.ids) + HELD_OUT_OFFSET

    def embed(images):
        with torch.no_grad():
            out = model(torch.stack([to_input(i) for i in images]))
        return torch.nn.functional.normalize(out.embedding.float(), dim=1).numpy(), out.quality.float().numpy()

    ref, _ = embed([render.render(int(i), 0, level=0.0)[0] for i in ids])
    print(
        f"genuine cosine / mean quality, {a.ids} held-out identities; impostor cosine "
        f"{(ref * ref[np.roll(np.arange(a.ids), 1)]).sum(1).mean():.2f}"
    )
    print("kind      " + " ".join(f"{lv:>11}" for lv in LEVELS))
    for kind in DEGRADATIONS:
        cells = []
        for lv in LEVELS:
            e, q = embed([render.render(int(i), 1, level=lv, kind=kind)[0] for i in ids])
            cells.append(f"{(e * ref).sum(1).mean():.2f}/{q.mean():.2f}")
        print(f"{kind:10s}" + " ".join(f"{c:>11}" for c in cells))
    # Oracle: how well "similarity to a clean image of the same identity" ranks the val images by
    # level; an upper bound on the quality_spearman a quality method can reach with this model.
    from scipy.stats import spearmanr

    from fiqa.data.synthface import SynthFacePairs

    pairs = SynthFacePairs(
        num_pairs=500, num_identities=400, seed=cfg.data.train.seed, level_beta=tuple(cfg.data.train.level_beta)
    )
    imgs = [pairs[i] for i in range(len(pairs))]
    e, q = embed([x[0] for x in imgs])
    clean, _ = embed([render.render(int(x[1]) + HELD_OUT_OFFSET, 10**6, level=0.0)[0] for x in imgs])
    levels = np.array([x[2]["degradation"] for x in imgs])
    print(
        f"oracle Spearman(cos to clean, level) = {spearmanr((e * clean).sum(1), levels).statistic:.3f}; "
        f"model quality Spearman = {spearmanr(q, levels).statistic:.3f} ({len(imgs)} val images)"
    )


if __name__ == "__main__":
    main()
