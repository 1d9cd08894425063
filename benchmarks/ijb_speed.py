"""IJB-C-scale timing and memory of ``fiqa.eval.ijb``: aggregation, 1:1, ERC and 1:N.

    python benchmarks/ijb_speed.py [--scale 1.0] [--dim 512] [--seed 0]

Synthetic inputs at IJB-C's size (``shared/reference/data_and_eval.md`` §3.1; ``--scale`` shrinks them):

* 469,375 images with ``--dim`` float32 features (subject centre + noise, so scores tie and separate as a
  model's do), a quality and a faceness per image, in shuffled order;
* 23,124 templates = 3,531 gallery (one per subject; G1 1,772 + G2 1,759) + 19,593 probe templates (IJB-C's
  1:N split; 3,531 + 19,593 = 23,124), image counts per template log-normal (mean ~20); media: a new media
  starts at an image with probability 0.3 (stills and short videos; the reference gives no media counts);
* 15,658,489 template pairs, gallery x probe: 19,557 genuine (a probe with its subject's gallery template)
  and 15,638,932 impostors (random gallery x probe, other subject);
* 1:N: the 3,531 gallery templates (2 splits) against the 19,593 probes.

Stages (wall time of one run each) and the peak RSS of the process (``ru_maxrss``, inputs included). Target
on 2 CPU cores: everything in <= 60 s and <= 4 GB. Always exits 0; never part of the tests.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import numpy as np

from fiqa.eval import erc as E
from fiqa.eval import ijb as I

IMAGES, GALLERY, PROBES = 469_375, 3_531, 19_593
GENUINE, IMPOSTOR = 19_557, 15_638_932


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def synthetic(scale: float, dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    n_g, n_p = max(int(GALLERY * scale), 20), max(int(PROBES * scale), 50)
    n_t, n = n_g + n_p, max(int(IMAGES * scale), 4 * (n_g + n_p))
    subj = np.r_[np.arange(n_g), rng.integers(0, n_g, n_p)]  # template -> subject
    w = rng.lognormal(0.0, 1.0, n_t)
    per_t = 1 + rng.multinomial(n - n_t, w / w.sum())  # images per template, sum n
    t_of_image = np.repeat(np.arange(n_t), per_t)
    starts = np.r_[0, np.cumsum(per_t)[:-1]]
    new_media = rng.random(n) < 0.3
    new_media[starts] = True
    media = np.cumsum(new_media)
    perm = rng.permutation(n)
    t_of_image, media = t_of_image[perm], media[perm]
    tid_of_template = np.sort(rng.choice(10 * n_t, n_t, replace=False)) + 1  # sparse ids, as IJB's
    feats = rng.standard_normal((n, dim), dtype=np.float32)
    centres = rng.standard_normal((n_g, dim), dtype=np.float32)
    for s in range(0, n, 1 << 16):  # identity signal, in place
        feats[s : s + (1 << 16)] += 0.35 * centres[subj[t_of_image[s : s + (1 << 16)]]]
    quality = rng.uniform(0.1, 1.0, n)
    faceness = rng.uniform(0.5, 1.0, n)

    n_gen, n_imp = max(int(GENUINE * scale), 10), max(int(IMPOSTOR * scale * scale), 1000)
    probes = n_g + rng.choice(n_p, min(n_gen, n_p), replace=False)
    g_pairs = np.stack([subj[probes], probes], 1)  # gallery template of subject s is template s
    gi, pi = rng.integers(0, n_g, n_imp), n_g + rng.integers(0, n_p, n_imp)
    gi = np.where(gi == subj[pi], (gi + 1) % n_g, gi)
    pairs = tid_of_template[np.r_[g_pairs, np.stack([gi, pi], 1)]]
    labels = np.r_[np.ones(len(g_pairs), np.int8), np.zeros(n_imp, np.int8)]
    order = rng.permutation(len(labels))
    return {
        "features": feats,
        "template_ids": tid_of_template[t_of_image],
        "media_ids": media,
        "qualities": quality,
        "faceness": faceness,
        "pairs": pairs[order],
        "pair_labels": labels[order],
        "gallery_templates": tid_of_template[:n_g],
        "gallery_subjects": subj[:n_g],
        "gallery_split": (np.arange(n_g) >= n_g // 2).astype(np.int64),
        "probe_templates": tid_of_template[n_g:],
        "probe_subjects": subj[n_g:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of IJB-C's images/templates (pairs: scale^2)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    d = synthetic(args.scale, args.dim, args.seed)
    t_data = time.perf_counter() - t0
    rss_inputs = rss_gb()
    rows = []

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t))
        return out

    common = (d["features"], d["template_ids"], d["media_ids"])
    tpl = timed(
        "aggregate (insightface: norms kept, faceness)",
        lambda: I.aggregate(*common, qualities=d["qualities"], faceness=d["faceness"], detector_score=True),
    )
    timed("aggregate (crfiqa min-max q')", lambda: I.aggregate(*common, qualities=d["qualities"], weighting="crfiqa"))
    timed(
        "aggregate (qmagface combination)", lambda: I.aggregate(*common, qualities=d["qualities"], weighting="qmagface")
    )
    r1 = timed("map pair template ids to rows", lambda: tpl.rows(d["pairs"][:, 0]))
    r2 = tpl.rows(d["pairs"][:, 1])
    scores = timed("1:1 pair cosines (blocked matmul)", lambda: I.pair_scores(tpl.features, r1, r2))
    timed("1:1 TAR@FAR (both rules) + ROC AUC", lambda: I.tar_at_far(scores, d["pair_labels"]))
    pq = np.minimum(tpl.quality[r1], tpl.quality[r2])
    timed("1:1 ERC (3 FMRs, 20 rates)", lambda: E.erc(scores, d["pair_labels"], pq).metrics())
    timed(
        "1:N rank-1/5/10, TPIR (insightface + NIST)",
        lambda: I.identify(
            tpl.features[tpl.rows(d["probe_templates"])],
            d["probe_subjects"],
            tpl.features[tpl.rows(d["gallery_templates"])],
            d["gallery_subjects"],
            gallery_split=d["gallery_split"],
        ),
    )
    m = timed(
        "whole protocol (aggregate + 1:1 + ERC + 1:N)",
        lambda: I.evaluate(
            d["features"],
            d["qualities"],
            d["template_ids"],
            d["media_ids"],
            d["pairs"],
            d["pair_labels"],
            d["faceness"],
            d["gallery_templates"],
            d["gallery_subjects"],
            d["gallery_split"],
            d["probe_templates"],
            d["probe_subjects"],
        ),
    )

    n, dim = d["features"].shape
    print(
        f"IJB speed: {n:,} images x {dim} float32, {len(np.unique(d['template_ids'])):,} templates, "
        f"{len(np.unique(np.c_[d['template_ids'], d['media_ids']], axis=0)):,} (template, media) groups, "
        f"{len(d['pair_labels']):,} pairs ({int(d['pair_labels'].sum()):,} genuine), 1:N "
        f"{len(d['gallery_templates']):,} gallery x {len(d['probe_templates']):,} probes"
    )
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}")
    print(f"inputs built in {t_data:.1f} s; peak RSS with inputs {rss_inputs:.2f} GB")
    print()
    print(f"| {'stage':<48} | {'seconds':>8} |")
    print(f"|{'-' * 50}|{'-' * 10}|")
    for name, sec in rows:
        print(f"| {name:<48} | {sec:8.2f} |")
    print()
    print(f"peak RSS {rss_gb():.2f} GB (inputs {rss_inputs:.2f} GB)")
    print("whole protocol:", {k: round(v, 4) for k, v in m.items() if k in ("tar@far1e-4", "rank1", "tpir@fpir1e-2")})


if __name__ == "__main__":
    main()
