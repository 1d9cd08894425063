"""MTCNN (Zhang et al., 2016): a three-stage cascade that finds faces and their 5 landmarks.

The networks are written here; their weights are the ones shipped inside the ``facenet-pytorch``
wheel from PyPI (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, MIT licence; the original Caffe
MTCNN weights as converted by D. Sandberg's ``facenet``). They are plain ``state_dict`` files,
loaded with ``torch.load(weights_only=True)`` and ``load_state_dict(strict=True)`` after their
SHA-256 is checked; facenet-pytorch's own code is never imported. The weights were trained on
transposed (MATLAB column-major) images; the conversion moved that into the kernels, except for the
flatten before the dense layers, which reads the feature map as (W, H, C): kept here (``_flatten``).

The cascade follows the reference implementation step by step:

1. **P-Net** on an image pyramid (scales ``12/min_size * factor**k`` while the short side stays
   >= 12 px), each cell with face probability >= ``thresholds[0]`` giving a 12x12 window
   (``fix((2*cell + 1)/scale)``, ``fix((2*cell + 12)/scale)``); NMS 0.5 (union) per scale, then 0.7
   across scales; boxes calibrated by the regression (``x1 + dx1 * (x2 - x1)``), squared, truncated.
2. **R-Net** on 24x24 crops (zero padding where a box leaves the image, area resize): probability
   > ``thresholds[1]``, NMS 0.7 (union), calibration (``x1 + dx1 * (x2 - x1 + 1)``), squared.
3. **O-Net** on 48x48 crops: probability > ``thresholds[2]``, the 5 landmarks
   (``x = x1 + w * lx - 1``, ``w = x2 - x1 + 1``), calibration, NMS 0.7 ("min": intersection over
   the smaller box).

Boxes inside the cascade use the reference's 1-based pixel indices; the returned boxes are 0-based
``(x1, y1, x2, y2)`` pixel edges (``x1 - 1, y1 - 1, x2, y2``), in the same frame as the landmarks.
Pixels are RGB, normalised ``(x - 127.5) / 128``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from fiqa.detect.boxes import _calibrate, _Candidates, _concat, _crops, _nms, _square, _to_input

__all__ = ["PNet", "RNet", "ONet", "MTCNN", "weights_dir", "WEIGHT_SHA256"]

# SHA-256 of the files in the facenet-pytorch 2.5.3 and 2.6.0 wheels (identical in both)
WEIGHT_SHA256 = {
    "pnet": "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f",
    "rnet": "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86",
    "onet": "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d",
}
WEIGHTS_ENV = "FIQA_MTCNN_WEIGHTS"


def _flatten(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, W*H*C): the layout of the converted dense weights."""
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class PNet(nn.Module):
    """Proposal network: fully convolutional, a 12x12 window per output cell (stride 2)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box regression

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)[:, 1]


class RNet(nn.Module):
    """Refinement network on 24x24 crops."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)[:, 1]


class ONet(nn.Module):
    """Output network on 48x48 crops: box, 5 landmarks (x1..x5, y1..y5 relative to the box), score."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)[:, 1]


# --------------------------------------------------------------------------------------------- weights
def weights_dir() -> Path:
    """The folder holding ``pnet.pt``, ``rnet.pt``, ``onet.pt``: ``$FIQA_MTCNN_WEIGHTS`` if set, else
    ``facenet_pytorch/data`` of the installed facenet-pytorch wheel (found without importing it)."""
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env)
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the MTCNN face detector needs its weights, which ship inside the facenet-pytorch wheel: "
            "`pip install facenet-pytorch==2.5.3` (a requirement of fiqa; `make install` brings it), or set "
            f"{WEIGHTS_ENV}=<folder with pnet.pt, rnet.pt, onet.pt>"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _load(net: nn.Module, name: str, folder: Path) -> nn.Module:
    path = folder / f"{name}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"MTCNN weights {str(path)!r} not found (expected {name}.pt in {str(folder)!r})")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHT_SHA256[name]:
        raise ValueError(
            f"MTCNN weights {str(path)!r}: SHA-256 {digest} is not that of facenet-pytorch's {name}.pt "
            f"({WEIGHT_SHA256[name]}); the file is corrupt or another model"
        )
    import io

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval().requires_grad_(False)


class MTCNN(nn.Module):
    """The cascade (see the module docstring). ``detect`` takes uint8 HxWx3 RGB images (any sizes)
    and returns, per image, ``(boxes (K, 4), scores (K,), landmarks (K, 5, 2))`` as float64 numpy,
    sorted by score (highest first).

    ``min_size``: the smallest face (box side, pixels of the given image) the pyramid looks for;
    ``thresholds``: P/R/O-Net probability thresholds; ``factor``: pyramid scale step;
    ``batch_size``: crops per R/O-Net forward."""

    def __init__(
        self,
        min_size: float = 20.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        device: str | torch.device | None = None,
        weights: str | os.PathLike | None = None,
        batch_size: int = 512,
    ):
        super().__init__()
        if not min_size > 0:
            raise ValueError(f"detect.min_size must be a positive number of pixels, got {min_size}")
        thresholds = tuple(float(t) for t in thresholds)
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"detect.thresholds must be 3 probabilities (P, R, O-Net), got {list(thresholds)}")
        if not 0.0 < factor < 1.0:
            raise ValueError(f"detect.factor must be in (0, 1) (pyramid step), got {factor}")
        self.min_size, self.thresholds, self.factor = float(min_size), thresholds, float(factor)
        self.batch_size = int(batch_size)
        folder = Path(weights) if weights is not None else weights_dir()
        self.pnet = _load(PNet(), "pnet", folder)
        self.rnet = _load(RNet(), "rnet", folder)
        self.onet = _load(ONet(), "onet", folder)
        self.to(torch.device(device) if device is not None else torch.device("cpu"))

    @property
    def device(self) -> torch.device:
        return self.conv_device()

    def conv_device(self) -> torch.device:
        return self.pnet.conv1.weight.device

    # ----------------------------------------------------------------------------------- stages
    def _scales(self, h: int, w: int, min_size: float) -> list[float]:
        m = 12.0 / min_size
        short, scales, s = min(h, w) * m, [], m
        while short >= 12:
            scales.append(s)
            s *= self.factor
            short *= self.factor
        return scales

    def _stage1(self, images: list[np.ndarray], min_size: float) -> _Candidates:
        boxes, owner = [], []
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape[:2], []).append(i)
        dev = self.conv_device()
        for (h, w), idx in groups.items():
            for start in range(0, len(idx), 16):
                chunk = idx[start : start + 16]
                per_image = {i: [] for i in chunk}
                for scale in self._scales(h, w, min_size):
                    hs, ws = int(np.ceil(h * scale)), int(np.ceil(w * scale))
                    pyr = np.stack(
                        [cv2.resize(images[i], (ws, hs), interpolation=cv2.INTER_AREA) for i in chunk]
                    ).astype(np.float32)
                    reg, prob = self.pnet(_to_input(pyr, dev))
                    reg, prob = reg.float().cpu().numpy(), prob.float().cpu().numpy()
                    for j, i in enumerate(chunk):
                        ys, xs = np.nonzero(prob[j] >= self.thresholds[0])
                        if ys.size == 0:
                            continue
                        cell = np.stack([xs, ys], axis=1).astype(np.float64)
                        q1 = np.fix((2 * cell + 1) / scale)
                        q2 = np.fix((2 * cell + 12) / scale)
                        b = np.concatenate([q1, q2, prob[j, ys, xs][:, None], reg[j][:, ys, xs].T], axis=1)
                        per_image[i].append(b[_nms(b, b[:, 4], 0.5)])
                for i, parts in per_image.items():
                    if not parts:
                        continue
                    b = np.concatenate(parts)
                    b = b[_nms(b, b[:, 4], 0.7)]
                    cal = _calibrate(b[:, :4], b[:, 5:9], inclusive=False)
                    b = _square(np.concatenate([cal, b[:, 4:5]], axis=1))
                    b[:, :4] = np.fix(b[:, :4])
                    boxes.append(b)
                    owner.append(np.full(len(b), i))
        return _concat(boxes, owner)

    def _refine(self, images: list[np.ndarray], cand: _Candidates, size: int, net: nn.Module):
        crops = np.concatenate([_crops(images[i], cand.boxes[cand.image == i], size) for i in np.unique(cand.image)])
        order = np.concatenate([np.nonzero(cand.image == i)[0] for i in np.unique(cand.image)])
        outs = []
        dev = self.conv_device()
        for s in range(0, len(crops), self.batch_size):
            outs.append([o.float().cpu().numpy() for o in net(_to_input(crops[s : s + self.batch_size], dev))])
        merged = [np.concatenate(parts) for parts in zip(*outs)]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return [m[inverse] for m in merged]

    def _stage2(self, images, cand: _Candidates) -> _Candidates:
        if len(cand.boxes) == 0:
            return cand
        reg, prob = self._refine(images, cand, 24, self.rnet)
        keep = prob > self.thresholds[1]
        boxes = np.concatenate([cand.boxes[keep, :4], prob[keep, None]], axis=1)
        reg, owner = reg[keep], cand.image[keep]
        out_b, out_i = [], []
        for i in np.unique(owner):
            sel = np.nonzero(owner == i)[0]
            sel = sel[_nms(boxes[sel], boxes[sel, 4], 0.7)]
            b = boxes[sel].copy()
            b[:, :4] = _calibrate(b[:, :4], reg[sel], inclusive=True)
            b = _square(b)
            b[:, :4] = np.fix(b[:, :4])
            out_b.append(b)
            out_i.append(np.full(len(b), i))
        return _concat(out_b, out_i)

    def _stage3(self, images, cand: _Candidates):
        if len(cand.boxes) == 0:
            return np.empty((0, 5)), np.empty((0, 5, 2)), np.empty(0, np.int64)
        reg, marks, prob = self._refine(images, cand, 48, self.onet)
        keep = prob > self.thresholds[2]
        boxes = np.concatenate([cand.boxes[keep, :4], prob[keep, None]], axis=1)
        reg, marks, owner = reg[keep], marks[keep], cand.image[keep]
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        pts = np.stack(
            [w[:, None] * marks[:, :5] + boxes[:, 0:1] - 1, h[:, None] * marks[:, 5:] + boxes[:, 1:2] - 1], 2
        )
        boxes[:, :4] = _calibrate(boxes[:, :4], reg, inclusive=True)
        out_b, out_p, out_i = [], [], []
        for i in np.unique(owner):
            sel = np.nonzero(owner == i)[0]
            sel = sel[_nms(boxes[sel], boxes[sel, 4], 0.7, mode="min")]
            out_b.append(boxes[sel])
            out_p.append(pts[sel])
            out_i.append(np.full(len(sel), i))
        if not out_b:
            return np.empty((0, 5)), np.empty((0, 5, 2)), np.empty(0, np.int64)
        return np.concatenate(out_b), np.concatenate(out_p), np.concatenate(out_i)

    # ------------------------------------------------------------------------------------ public
    @torch.no_grad()
    def detect(self, images: list[np.ndarray], min_size: float | None = None):
        """Per image: ``(boxes (K, 4) 0-based x1 y1 x2 y2, scores (K,), landmarks (K, 5, 2) x, y)``."""
        for k, img in enumerate(images):
            if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
                got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
                raise ValueError(f"detect: image {k} must be uint8 HxWx3 RGB, got {got}")
        min_size = float(self.min_size if min_size is None else min_size)
        cand = self._stage2(images, self._stage1(images, min_size))
        boxes, pts, owner = self._stage3(images, cand)
        results = []
        for i in range(len(images)):
            sel = np.nonzero(owner == i)[0]
            sel = sel[np.argsort(-boxes[sel, 4], kind="stable")]
            b = boxes[sel, :4].astype(np.float64)
            b[:, :2] -= 1.0  # 1-based first pixel -> 0-based left/top edge
            results.append((b, boxes[sel, 4].astype(np.float64), pts[sel].astype(np.float64)))
        return results
