"""A released model as a :class:`~fiqa.methods.base.FaceModule`, so eval/quality tasks use it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fiqa.interop.formats import QUALITY_KINDS, Released
from fiqa.methods.base import FaceModule
from fiqa.types import BackboneOutput

FIQA_MEAN = FIQA_STD = 127.5  # fiqa's contract: images enter as (pixel - 127.5) / 127.5


class ReleasedModel(FaceModule):
    """Inference-only FaceModule around a released backbone (+ quality head); ``head`` is None.

    Images enter in fiqa's contract, (pixel - 127.5) / 127.5, in the channel order ``color``
    (set ``data.color`` to it); they are re-mapped to the original's normalisation
    (``input_mean``/``input_std`` on the 0..255 scale, e.g. MagFace x/255) before the backbone.
    ``quality()`` follows ``quality_kind``: ``"head"`` = quality_head(embedding) (CR-FIQA),
    ``"eqface"`` = quality_head(flattened pre-fc map), ``"norm"`` = ||embedding||.
    """

    def __init__(
        self,
        backbone: nn.Module,
        quality_head: nn.Module | None = None,
        quality_kind: str = "norm",
        color: str = "rgb",
        input_mean: Sequence[float] = (127.5, 127.5, 127.5),
        input_std: Sequence[float] = (127.5, 127.5, 127.5),
        val_sets: Mapping | None = None,
        channels_last: bool = True,
    ) -> None:
        if quality_kind not in QUALITY_KINDS:
            raise ValueError(f"quality_kind={quality_kind!r} is not valid; choose one of {list(QUALITY_KINDS)}")
        if quality_kind != "norm" and quality_head is None:
            raise ValueError(f"quality_kind={quality_kind!r} needs a quality_head")
        super().__init__(backbone, None, None, val_sets, quality_head, channels_last)
        self.quality_kind, self.color = quality_kind, color
        # what it is fed (fiqa's contract in the original's channel order); the remap below does the rest
        self.input_convention = {"color": color, "mean": 127.5, "std": 127.5}
        mean = torch.as_tensor([float(m) for m in input_mean]).view(1, 3, 1, 1)
        std = torch.as_tensor([float(s) for s in input_std]).view(1, 3, 1, 1)
        self.remap = not (bool(torch.all(mean == FIQA_MEAN)) and bool(torch.all(std == FIQA_STD)))
        # original input = (pixel - mean) / std with pixel = x * 127.5 + 127.5
        self.register_buffer("input_scale", FIQA_STD / std, persistent=False)
        self.register_buffer("input_shift", (FIQA_MEAN - mean) / std, persistent=False)

    def to_original_input(self, images: Tensor) -> Tensor:
        """fiqa's (pixel - 127.5) / 127.5 -> the original's (pixel - mean) / std."""
        if not self.remap:
            return images
        return images * self.input_scale.to(images.dtype) + self.input_shift.to(images.dtype)

    def embed(self, images: Tensor) -> BackboneOutput:
        images = self.to_original_input(images)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone(images, return_feature_map=self.quality_kind == "eqface")

    def quality(self, out: BackboneOutput) -> Tensor:
        if self.quality_kind == "head":
            return self.quality_head(out.embedding.float()).squeeze(1)
        if self.quality_kind == "eqface":
            return self.quality_head(out.feature_map.float())
        return out.embedding.float().norm(dim=1)

    def losses(self, out, batch):
        raise NotImplementedError(
            "a released model (fiqa.interop) is for inference: train with a method config instead"
        )


def to_face_module(released: Released, val_sets: Mapping | None = None, channels_last: bool = True) -> ReleasedModel:
    """The :class:`ReleasedModel` of a :class:`Released` (in ``eval()`` mode)."""
    model = ReleasedModel(
        released.backbone,
        released.quality_head,
        released.quality_kind,
        released.color,
        released.normalize_mean,
        released.normalize_std,
        val_sets=val_sets,
        channels_last=channels_last,
    )
    model.released_format, model.released_arch = released.format, released.arch
    return model.eval()
