"""The box arithmetic of the MTCNN cascade (:mod:`fiqa.detect.mtcnn`): NMS with the reference's inclusive
pixel areas, squaring, box regression, crops and the network input. Numpy (+ torchvision's NMS)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.ops import nms as _tv_nms

_NORM_MEAN, _NORM_SCALE = 127.5, 0.0078125  # the reference's (x - 127.5) * 0.0078125


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy NMS with the reference's inclusive pixel areas ((x2 - x1 + 1) * (y2 - y1 + 1)).
    ``union``: IoU (torchvision on boxes widened by 1 px, which is the same quantity); ``min``:
    intersection over the smaller area."""
    if len(boxes) == 0:
        return np.empty(0, dtype=np.int64)
    if mode == "union":
        b = torch.from_numpy(np.ascontiguousarray(boxes[:, :4], dtype=np.float32)).clone()
        b[:, 2:] += 1.0
        return _tv_nms(b, torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32)), threshold).numpy()
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        overlap = w * h / np.minimum(area[i], area[rest])
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square around its centre (side = the longer side)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def _calibrate(boxes: np.ndarray, reg: np.ndarray, inclusive: bool) -> np.ndarray:
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + (1 if inclusive else 0)
    h = boxes[:, 3] - boxes[:, 1] + (1 if inclusive else 0)
    out[:, 0] += reg[:, 0] * w
    out[:, 1] += reg[:, 1] * h
    out[:, 2] += reg[:, 2] * w
    out[:, 3] += reg[:, 3] * h
    return out


def _crops(img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """(K, size, size, 3) float32 crops of the integer 1-based boxes, zero-padded outside the image."""
    h, w = img.shape[:2]
    out = np.zeros((len(boxes), size, size, 3), np.float32)
    for k, (x1, y1, x2, y2) in enumerate(boxes[:, :4].astype(np.int64)):
        tw, th = x2 - x1 + 1, y2 - y1 + 1
        if tw < 1 or th < 1:
            continue
        tmp = np.zeros((th, tw, 3), np.uint8)
        sx0, sy0, sx1, sy1 = max(x1 - 1, 0), max(y1 - 1, 0), min(x2, w), min(y2, h)  # source, 0-based, exclusive
        if sx1 > sx0 and sy1 > sy0:
            tmp[sy0 - (y1 - 1) : sy1 - (y1 - 1), sx0 - (x1 - 1) : sx1 - (x1 - 1)] = img[sy0:sy1, sx0:sx1]
        out[k] = cv2.resize(tmp, (size, size), interpolation=cv2.INTER_AREA)
    return out


def _to_input(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """(K, H, W, 3) float32 RGB pixels -> normalised (K, 3, H, W) on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
    return (x.to(device) - _NORM_MEAN) * _NORM_SCALE


@dataclass(frozen=True)
class _Candidates:
    boxes: np.ndarray  # (K, 5): x1, y1, x2, y2 (1-based), score
    image: np.ndarray  # (K,) index of the image each box belongs to


def _concat(boxes: list[np.ndarray], owner: list[np.ndarray]) -> _Candidates:
    if not boxes:
        return _Candidates(np.empty((0, 5)), np.empty(0, np.int64))
    return _Candidates(np.concatenate(boxes), np.concatenate(owner).astype(np.int64))
