"""Quality scores: pure formulas (``crfiqa``, ``serfiq``, ``qmagface``) and ``score(images, model)``.

``fiqa.quality.score`` is imported lazily, so the numpy-only modules stay free of torch."""

from __future__ import annotations


def __getattr__(name: str):
    if name == "score":
        from fiqa.quality.scoring import score

        return score
    raise AttributeError(f"module 'fiqa.quality' has no attribute {name!r}")
