"""SynthFace: the embedded, procedural face data set (no files, no download).

Every image is a deterministic function of ``(seed, identity, sample)``:

* an **identity** fixes the face geometry (head ellipse, eye/brow/nose/mouth placement and
  size), skin/hair/iris/lip colours from small shared palettes, the hair style and line, and an
  identity texture (moles and a low-frequency skin
  pattern);
* a **sample** adds nuisance (in-plane rotation, a yaw-like horizontal compression, scale, shift,
  illumination gradient and colour cast, expression, background colour) and one degradation
  drawn from a
  configurable mix (Gaussian blur, down-scaling to 56..8 px and back, noise, JPEG, occlusion,
  low contrast) at a ground-truth **degradation level** in [0, 1], returned in the meta.

Level 0 is a clean image; level 1 destroys most of the identity (4 px faces, sigma-25 blur,
contrast down to 3 % under sensor noise, 85 % of the face occluded ...), and the loss of identity grows
roughly linearly with the level for every kind. Levels are drawn from Beta(a, b) (default a=1,
b=3: most images are fine, some are bad, as in real data).

Readers yield ``(uint8 HxWx3 RGB image, label, meta)``; meta has ``index``, ``degradation``
and ``kind`` (the degradation applied).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from fiqa.data.synthface_identity import _XX, _YY, _iax, _ipt, _rng, make_identity, render_identity

DEGRADATIONS = ("blur", "downscale", "noise", "jpeg", "occlusion", "contrast")
_DEFAULT_MIX = {"blur": 1.0, "downscale": 1.0, "noise": 1.0, "jpeg": 1.0, "occlusion": 1.0, "contrast": 1.0}
# Identities of the verification split live far away from the training ids, so they are
# never seen in training whatever num_identities is.
HELD_OUT_OFFSET = 10_000_000


def _level(r: np.random.Generator, beta: Sequence[float], max_level: float) -> float:
    return float(min(r.beta(beta[0], beta[1]), 1.0) * max_level)


class SynthFaceRenderer:
    """Renders samples; caches canonical identities (per process, so fork-safe)."""

    def __init__(
        self,
        seed: int = 0,
        image_size: int = 112,
        degradations: Mapping[str, float] | None = None,
        level_beta: Sequence[float] = (1.0, 3.0),
        max_level: float = 1.0,
        cache_size: int = 4096,
    ):
        mix = dict(_DEFAULT_MIX if degradations is None else degradations)
        unknown = sorted(set(mix) - set(DEGRADATIONS))
        if unknown:
            raise ValueError(f"data.degradations: unknown kind(s) {unknown}; valid choices: {list(DEGRADATIONS)}")
        weights = np.array([float(mix.get(k, 0.0)) for k in DEGRADATIONS])
        if (weights < 0).any():
            raise ValueError(f"data.degradations: weights must be >= 0, got {mix}")
        self.kinds = DEGRADATIONS
        self.probs = weights / weights.sum() if weights.sum() > 0 else None  # None: no degradation at all
        self._cdf = None if self.probs is None else np.cumsum(self.probs)
        if len(level_beta) != 2 or min(level_beta) <= 0:
            raise ValueError(f"data.level_beta must be two positive numbers (Beta(a, b)), got {list(level_beta)}")
        if not 0.0 <= max_level <= 1.0:
            raise ValueError(f"data.max_level must be in [0, 1], got {max_level}")
        self.seed, self.image_size = int(seed), int(image_size)
        self.level_beta, self.max_level = tuple(float(b) for b in level_beta), float(max_level)
        self.cache_size = cache_size
        self._cache: OrderedDict = OrderedDict()

    def identity(self, identity: int):
        hit = self._cache.get(identity)
        if hit is None:
            ident = make_identity(self.seed, identity)
            hit = (ident, *render_identity(ident))
            self._cache[identity] = hit
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(identity)
        return hit

    def sample_level(self, identity: int, sample: int) -> float:
        """The ground-truth degradation level drawn for this sample (cheap: no rendering)."""
        return _level(_rng(self.seed, identity, sample, 0x5A), self.level_beta, self.max_level)

    def render(self, identity: int, sample: int, level: float | None = None, kind: str | None = None):
        """Image (uint8 RGB, image_size^2) of sample ``sample`` of ``identity``, its level and kind.
        ``level``/``kind`` override the drawn ones (contact sheets, tests); the nuisance stays."""
        ident, base, mask = self.identity(identity)
        r = _rng(self.seed, identity, sample, 0x5A)
        drawn = _level(r, self.level_beta, self.max_level)  # first draw: see sample_level
        level = drawn if level is None else float(level)
        u = r.random(12)  # all nuisance draws at once, in a fixed order
        if kind is None:
            kind = (
                "none"
                if self.probs is None
                else self.kinds[int(np.searchsorted(np.cumsum(self.probs), u[0] * 0.999999))]
            )
        img = base.copy()
        # expression: mouth openness and smile
        cx = ident.head_center[0]
        open_, smile = 0.5 + 4.5 * u[1], -0.4 + 1.4 * u[2]
        cv2.ellipse(
            img, _ipt((cx, ident.mouth_y)), _iax((ident.mouth_w, open_)), 0, 0, 360, ident.lips, -1, cv2.LINE_AA, 4
        )
        cv2.ellipse(
            img,
            _ipt((cx, ident.mouth_y - smile * 2)),
            _iax((ident.mouth_w * 0.9, max(open_ * 0.4, 0.6))),
            0,
            0,
            180,
            (40, 20, 20),
            -1,
            cv2.LINE_AA,
            4,
        )
        # background: per-sample colour (nuisance)
        canvas = np.empty_like(img)
        canvas[:] = (20 + 215 * u[3:6]).astype(np.uint8)
        cv2.copyTo(img, mask, canvas)
        # geometry, the residual of a 5-point alignment: in-plane rotation (+-6 deg), scale (0.95..1.05),
        # shift (+-3 px), yaw-like horizontal compression
        a = math.radians(-6 + 12 * u[6])
        scale, tx, ty, yaw = 0.95 + 0.1 * u[7], -3 + 6 * u[8], -3 + 6 * u[9], -0.15 + 0.3 * u[10]
        c, s_ = scale * math.cos(a), scale * math.sin(a)
        # rotation/scale @ yaw (horizontal compression k about the centre, shifted towards the turn),
        # about the image centre o, then the shift: one 2x3 affine matrix, multiplied out
        k, o = 1 - abs(yaw) * 0.3, 55.5
        t1 = yaw * 6 - k * o
        m = np.array([[c * k, -s_, c * t1 + s_ * o + o + tx], [s_ * k, c, s_ * t1 - c * o + o + ty]])
        img = cv2.warpAffine(canvas, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # illumination: brightness (0.85..1.15) and a linear gradient (+-15 % across the image)
        b, gx, gy = 0.85 + 0.3 * u[11], -0.15 + 0.3 * r.random(), -0.15 + 0.3 * r.random()
        light = cv2.addWeighted(_XX, gx / 56, _YY, gy / 56, b - (gx + gy) * o / 56)
        cast = 0.9 + 0.2 * r.random(3)  # white balance: per-channel gains 0.9..1.1
        img = cv2.multiply(img, cv2.merge([light, light, light]), dtype=cv2.CV_8U)
        img = cv2.multiply(img, (float(cast[0]), float(cast[1]), float(cast[2]), 0.0), dtype=cv2.CV_8U)
        if self.image_size != 112:
            img = cv2.resize(img, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)
        if level > 0 and kind != "none":
            img = degrade(img, kind, level, r)
        return img, level, kind


# level -> lv = level**gamma per kind, measured with benchmarks/synthface_calibration.py so that the
# genuine cosine of a trained model falls roughly linearly with the level for every kind.
_GAMMA = {"blur": 0.4, "downscale": 0.22, "noise": 0.7, "jpeg": 0.2, "occlusion": 1.25, "contrast": 0.26}
_NOISE_BANK: dict = {}


def _noise(shape: tuple, r: np.random.Generator) -> np.ndarray:
    """Unit Gaussian noise of ``shape``: a random crop (seeded by ``r``) of a fixed 4x-larger
    field made once per process (drawing 37k normals per image would dominate the cost)."""
    h, w, c = shape
    bank = _NOISE_BANK.get(shape)
    if bank is None:
        bank = np.random.default_rng(0x5EED).standard_normal((4 * h, 4 * w, c), dtype=np.float32)
        _NOISE_BANK[shape] = bank
    y, x = r.integers(0, 3 * h), r.integers(0, 3 * w)
    crop = bank[y : y + h, x : x + w]
    return crop if r.random() < 0.5 else -crop[::-1]


def degrade(img: np.ndarray, kind: str, level: float, r: np.random.Generator) -> np.ndarray:
    """Apply degradation ``kind`` at ``level`` in [0, 1] to a uint8 RGB image.

    The level-to-parameter maps are calibrated so that the loss of identity (genuine cosine of
    a trained model) falls roughly linearly with the level for every kind (measured with
    ``benchmarks/synthface_calibration.py``), and level 1 leaves little identity: blur sigma
    0.3 -> 25 px, 4-px faces, noise std 100 + coarse blotches std 130, JPEG q3 of a 17-px frame,
    3 % contrast, 85 % of the face box occluded.
    """
    s = img.shape[0]
    k = s / 112.0
    lv = level ** _GAMMA[kind]  # per-kind shape: identity loss roughly linear in the level
    if kind == "blur":
        sigma = (0.3 + 24.7 * lv) * k
        if sigma <= 3:
            return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)
        # large sigma: blur a frame down-sampled by sigma/2 with sigma 2 (same result, ~30x cheaper)
        side = max(int(round(2 * s / sigma)), 2)
        small = cv2.GaussianBlur(cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA), (0, 0), 1.0)
        return cv2.resize(small, (s, s), interpolation=cv2.INTER_LINEAR)
    if kind == "downscale":
        side = max(int(round(56 * (4 / 56) ** lv * k)), 2)
        small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (s, s), interpolation=cv2.INTER_LINEAR)
    if kind == "noise":  # fine sensor noise plus coarse blotches (which mask colour and shape)
        coarse = cv2.resize(_noise((max(s // 8, 2), max(s // 8, 2), 3), r), (s, s), interpolation=cv2.INTER_LINEAR)
        return cv2.add(
            img, _noise(img.shape, r) * np.float32(4 + 100 * lv) + coarse * np.float32(130 * lv), dtype=cv2.CV_8U
        )
    if kind == "jpeg":  # a compressed, smaller frame: quality 90 -> 3, side 112 -> 17 px
        q = int(round(3 + 87 * (1 - lv) ** 2))
        side = max(int(round(s * (1 - 0.85 * lv))), 8)
        small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA) if side != s else img
        ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, q])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        return cv2.resize(out, (s, s), interpolation=cv2.INTER_LINEAR) if side != s else out
    if kind == "occlusion":
        out = img.copy()
        frac = 0.85 * lv  # fraction of the face box covered
        w = int(round(s * 0.7 * np.sqrt(frac) * r.uniform(0.8, 1.25)))
        hgt = int(round((s * 0.7) ** 2 * frac / max(w, 1)))
        x0 = int(r.uniform(0.15 * s, max(0.85 * s - w, 0.15 * s + 1)))
        y0 = int(r.uniform(0.25 * s, max(0.9 * s - hgt, 0.25 * s + 1)))
        colour = tuple(float(c) for c in r.uniform(0, 255, 3))
        cv2.rectangle(out, (x0, y0), (x0 + w, y0 + hgt), colour, -1)
        return out
    if kind == "contrast":
        c = 1.0 - 0.97 * lv
        mean = np.array(cv2.mean(img)[:3], np.float32)
        f = cv2.addWeighted(img.astype(np.float32), c, _noise(img.shape, r), 3.0, 0.0) + mean * (1 - c)
        return cv2.convertScaleAbs(f)
    raise ValueError(f"unknown degradation kind {kind!r}; valid choices: {list(DEGRADATIONS)}")


class SynthFace:
    """Training split: ``num_identities`` x ``images_per_identity`` images, labels 0..N-1.

    ``__getitem__(i) -> (uint8 HxWx3 RGB, label, meta)``; sample ``i`` is image
    ``i % images_per_identity`` of identity ``i // images_per_identity``.
    """

    def __init__(
        self,
        num_identities: int = 300,
        images_per_identity: int = 36,
        seed: int = 0,
        image_size: int = 112,
        degradations: Mapping[str, float] | None = None,
        level_beta: Sequence[float] = (1.0, 3.0),
        max_level: float = 1.0,
    ):
        if num_identities < 2 or images_per_identity < 1:
            raise ValueError(
                f"data.num_identities must be >= 2 and data.images_per_identity >= 1, "
                f"got {num_identities} and {images_per_identity}"
            )
        self.num_identities, self.images_per_identity = int(num_identities), int(images_per_identity)
        self.num_classes = self.num_identities
        self.renderer = SynthFaceRenderer(seed, image_size, degradations, level_beta, max_level)

    def __len__(self) -> int:
        return self.num_identities * self.images_per_identity

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"SynthFace index {i} out of range [0, {len(self)})")
        ident, sample = divmod(int(i), self.images_per_identity)
        img, level, kind = self.renderer.render(ident, sample)
        return img, ident, {"index": int(i), "degradation": level, "kind": kind}


class SynthFacePairs:
    """Verification split (``val=synth``): ``num_pairs`` pairs of held-out identities, pair p
    genuine iff p is even (so every contiguous fold holds both kinds), degradation drawn
    independently on both sides. Images are ordered 2p, 2p+1 as in insightface ``.bin`` files.

    ``targets()`` gives what protocols need: ``issame`` (P,) and ``degradation`` (2P,).
    """

    def __init__(
        self,
        num_pairs: int = 1000,
        num_identities: int = 400,
        seed: int = 0,
        image_size: int = 112,
        degradations: Mapping[str, float] | None = None,
        level_beta: Sequence[float] = (1.0, 3.0),
        max_level: float = 1.0,
        pair_seed: int = 1234,
    ):
        if num_pairs < 20 or num_identities < 2:
            raise ValueError(
                f"val.synth: num_pairs must be >= 20 and num_identities >= 2, got {num_pairs}, {num_identities}"
            )
        self.num_pairs, self.num_identities = int(num_pairs), int(num_identities)
        self.renderer = SynthFaceRenderer(seed, image_size, degradations, level_beta, max_level)
        r = _rng(seed, pair_seed, 0x9A)
        a = r.integers(num_identities, size=num_pairs)
        b = (a + r.integers(1, num_identities, size=num_pairs)) % num_identities
        self.issame = np.arange(num_pairs) % 2 == 0
        b = np.where(self.issame, a, b)
        ids = np.stack([a, b], 1).reshape(-1) + HELD_OUT_OFFSET
        # sample numbers: distinct per image so genuine pairs are two different images
        self._ids = ids.astype(np.int64)
        self._samples = np.arange(2 * num_pairs, dtype=np.int64)
        self._levels = np.array([self.renderer.sample_level(int(i), int(s)) for i, s in zip(self._ids, self._samples)])

    def __len__(self) -> int:
        return 2 * self.num_pairs

    def __getitem__(self, i: int):
        img, level, kind = self.renderer.render(int(self._ids[i]), int(self._samples[i]))
        return img, int(self._ids[i] - HELD_OUT_OFFSET), {"index": int(i), "degradation": level, "kind": kind}

    def targets(self) -> dict:
        return {"issame": self.issame.copy(), "degradation": self._levels.copy()}
