"""SynthFace identities: the geometry, palette colours, hair and texture an identity fixes
(:func:`make_identity`, a deterministic function of ``(seed, identity)``) and their rendering on a clean
canvas (:func:`render_identity`); :mod:`fiqa.data.synthface` adds each sample's nuisance and degradation."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Identity", "make_identity", "render_identity"]


@dataclass(frozen=True)
class Identity:
    """Parameters of one synthetic identity (all in the 112x112 canonical frame)."""

    head_axes: tuple  # (ax, ay) half-axes of the head ellipse
    head_center: tuple
    skin: tuple  # RGB
    hair: tuple  # hair and brow colour
    hair_u: tuple  # hair style, hair line, lean
    eye_y: float
    eye_dx: float  # half distance between the eyes
    eye_size: tuple  # (rx, ry)
    iris: tuple
    brow_dy: float
    brow_thick: int
    brow_tilt: float
    nose_len: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lips: tuple
    moles: tuple  # ((x, y, r), ...)
    pattern: tuple  # (fx, fy, phase, amp) of the skin pattern
    ears: float  # ear size


def _rng(*keys: int) -> np.random.Generator:
    return np.random.Generator(np.random.SFC64([int(k) & 0xFFFFFFFF for k in keys]))


_SKIN = np.array([[224, 172, 140], [198, 134, 96], [141, 85, 56], [240, 200, 170], [176, 120, 90]], np.float64)
_HAIR = np.array(
    [[20, 16, 14], [70, 45, 30], [120, 80, 45], [200, 165, 100], [150, 60, 30], [160, 160, 160]], np.float64
)
_IRIS = np.array([[60, 40, 25], [90, 120, 160], [80, 110, 70], [40, 40, 40]], np.float64)


def make_identity(seed: int, identity: int) -> Identity:
    """The identity ``identity`` of the SynthFace universe ``seed`` (deterministic)."""
    r = _rng(seed, identity, 0x1D)
    # Colours come from small palettes shared by many identities, so colour alone (which survives
    # blur and down-scaling) does not identify: geometry and texture must.
    skin = _SKIN[r.integers(len(_SKIN))] * r.uniform(0.95, 1.05)
    hair = _HAIR[r.integers(len(_HAIR))] * r.uniform(0.9, 1.1)
    iris = _IRIS[r.integers(len(_IRIS))]
    moles = tuple(
        (float(r.uniform(34, 78)), float(r.uniform(40, 92)), float(r.uniform(2.0, 4.0)))
        for _ in range(int(r.integers(2, 6)))
    )
    return Identity(
        head_axes=(float(r.uniform(33, 37)), float(r.uniform(43, 47))),
        head_center=(56.0 + float(r.uniform(-2, 2)), 60.0 + float(r.uniform(-2, 3))),
        skin=tuple(np.clip(skin, 30, 255).tolist()),
        hair=tuple(np.clip(hair, 0, 255).tolist()),
        hair_u=(float(r.random()), float(r.random()), float(r.random())),
        eye_y=float(r.uniform(46, 60)),
        eye_dx=float(r.uniform(11, 21)),
        eye_size=(float(r.uniform(3.5, 8.5)), float(r.uniform(2.5, 5.5))),
        iris=tuple(float(c) for c in iris),
        brow_dy=float(r.uniform(5, 13)),
        brow_thick=int(r.integers(2, 6)),
        brow_tilt=float(r.uniform(-0.35, 0.35)),
        nose_len=float(r.uniform(8, 22)),
        nose_w=float(r.uniform(4, 12)),
        mouth_y=float(r.uniform(78, 93)),
        mouth_w=float(r.uniform(7, 20)),
        lips=tuple(np.clip(skin * r.uniform(0.5, 0.8) + np.array([40, 0, 0]), 0, 255).tolist()),
        moles=moles,
        pattern=(
            float(r.uniform(0.05, 0.25)),
            float(r.uniform(0.05, 0.25)),
            float(r.uniform(0, 6.28)),
            float(r.uniform(0.06, 0.16)),
        ),
        ears=float(r.uniform(6, 8)),
    )


_YY, _XX = np.mgrid[0:112, 0:112].astype(np.float32)


def _ipt(p) -> tuple:
    return (int(round(p[0] * 16)), int(round(p[1] * 16)))


def _iax(a) -> tuple:
    return (max(int(round(a[0] * 16)), 1), max(int(round(a[1] * 16)), 1))


def render_identity(ident: Identity) -> tuple[np.ndarray, np.ndarray]:
    """The canonical (frontal, neutral, clean) face without the mouth, RGB uint8 on a black
    background, and its coverage mask (uint8, 1 on the head, ears and hair)."""
    img = np.zeros((112, 112, 3), np.uint8)
    aa, sh = cv2.LINE_AA, 4  # sub-pixel drawing (coordinates * 16)
    cx, cy = ident.head_center
    ax, ay = ident.head_axes
    # ears, head, hair
    for side in (-1, 1):
        cv2.ellipse(
            img,
            _ipt((cx + side * ax, ident.eye_y + 6)),
            _iax((ident.ears * 0.6, ident.ears)),
            0,
            0,
            360,
            ident.skin,
            -1,
            aa,
            sh,
        )
    cv2.ellipse(img, _ipt((cx, cy)), _iax((ax, ay)), 0, 0, 360, ident.skin, -1, aa, sh)
    mask = np.zeros((112, 112), np.uint8)
    cv2.ellipse(mask, _ipt((cx, cy)), _iax((ax, ay)), 0, 0, 360, 255, -1, aa, sh)
    # skin pattern (identity texture)
    fx, fy, ph, amp = ident.pattern
    pattern = 1.0 + amp * np.sin(fx * _XX + ph) * np.cos(fy * _YY - ph)
    m = mask.astype(np.float32)[..., None] / 255.0
    img = np.clip(img * (1 - m + m * pattern[..., None]), 0, 255).astype(np.uint8)
    # eyes with irises, brows
    ex, ey = ident.eye_dx, ident.eye_y
    for side in (-1, 1):
        c = (cx + side * ex, ey)
        cv2.ellipse(img, _ipt(c), _iax(ident.eye_size), 0, 0, 360, (250, 250, 250), -1, aa, sh)
        cv2.circle(img, _ipt(c), int(ident.eye_size[1] * 0.9 * 16), ident.iris, -1, aa, sh)
        cv2.circle(img, _ipt(c), int(ident.eye_size[1] * 0.35 * 16), (10, 10, 10), -1, aa, sh)
        by = ey - ident.brow_dy
        tilt = ident.brow_tilt * side
        p1 = (cx + side * (ex - ident.eye_size[0] - 1), by + 3 * tilt)
        p2 = (cx + side * (ex + ident.eye_size[0] + 1), by - 3 * tilt)
        cv2.line(img, _ipt(p1), _ipt(p2), tuple(0.6 * np.array(ident.hair)), ident.brow_thick, aa, sh)
    # nose
    ny = ey + 4
    nose = np.array(
        [[cx, ny], [cx - ident.nose_w * 0.5, ny + ident.nose_len], [cx + ident.nose_w * 0.5, ny + ident.nose_len]]
    )
    cv2.polylines(img, [np.round(nose * 16).astype(np.int32)], True, tuple(0.7 * np.array(ident.skin)), 2, aa, sh)
    # moles
    for x, y, rad in ident.moles:
        cv2.circle(img, _ipt((x, y)), int(rad * 16), (60, 40, 30), -1, aa, sh)
    _draw_hair(img, ident)
    coverage = (img.max(axis=2) > 0).astype(np.uint8)  # head, ears and hair: all but background
    return img, coverage


def _draw_hair(img: np.ndarray, ident: Identity) -> None:
    """The identity's hair (style, colour, hair line)."""
    aa, sh = cv2.LINE_AA, 4
    cx, cy = ident.head_center
    ax, ay = ident.head_axes
    style_u, line_u, lean_u = ident.hair_u
    colour = ident.hair
    line = 22 + 14 * line_u
    style = int(style_u * 3) % 3
    if style == 0:  # cap: the top of the head ellipse down to the hair line
        arc = cv2.ellipse2Poly((int(cx * 16), int(cy * 16)), (int((ax + 2) * 16), int((ay + 2) * 16)), 0, 180, 360, 8)
        arc[:, 1] = np.minimum(arc[:, 1], int(line * 16))
        cv2.fillPoly(img, [arc.astype(np.int32)], colour, aa, sh)
    elif style == 1:  # side part
        lean = 8 * (lean_u - 0.5)
        pts = np.array(
            [
                [cx - ax - 3, cy - 5],
                [cx - ax, cy - ay * 0.8],
                [cx + lean, cy - ay - 3],
                [cx + ax, cy - ay * 0.7],
                [cx + ax + 3, cy - 10],
                [cx + ax * 0.4, line],
                [cx - ax * 0.6, line + 6],
            ]
        )
        cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], colour, aa, sh)
    else:  # short hair: a band
        cv2.ellipse(
            img,
            _ipt((cx, cy - 2)),
            _iax((ax + 1, ay + 1)),
            0,
            200,
            340,
            colour,
            5 + int(3 * lean_u),
            aa,
            sh,
        )
