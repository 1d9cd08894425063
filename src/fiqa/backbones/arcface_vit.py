"""arcface_torch's face ViT (``vit_t``, ``vit_s``, ``vit_b``, ``vit_l``, ``vit_h`` and their
``_dp005_mask*`` variants) with its parameter names, so its released state_dicts load strictly.

Facts (insightface ``recognition/arcface_torch/backbones/vit.py`` and ``__init__.py``, commit
7fadd420):

* ``get_model`` builds ``VisionTransformer(img_size=112, patch_size=9, num_classes=num_features,
  embed_dim, depth, num_heads=8, drop_path_rate, norm_layer="ln", mask_ratio[, using_checkpoint])``
  with mlp_ratio 4, qkv_bias False, drop_rate = attn_drop_rate = 0:

  =====================  =========  =====  ==============  ==========  ================
  name                   embed_dim  depth  drop_path_rate  mask_ratio  using_checkpoint
  =====================  =========  =====  ==============  ==========  ================
  vit_t                  256        12     0.1             0.1         no
  vit_t_dp005_mask0      256        12     0.05            0.0         no
  vit_s                  512        12     0.1             0.1         no
  vit_s_dp005_mask_0     512        12     0.05            0.0         no
  vit_b                  512        24     0.1             0.1         yes
  vit_b_dp005_mask_005   512        24     0.05            0.05        yes
  vit_l_dp005_mask_005   768        24     0.05            0.05        yes
  vit_h                  1024       48     0.1             0.0         yes
  =====================  =========  =====  ==============  ==========  ================

  (the WebFace42M configs ``configs/wf42m_pfc03_40epoch_*_vit_*.py`` use the ``_dp005_*`` names).
  The variants of one size differ only in training-time settings: their keys and eval outputs are equal.
* ``patch_embed.proj`` = Conv2d(3, E, 9, stride 9) on the 112x112 input -> 12x12 = 144 patches
  (the last 4 pixel rows/columns are never seen); ``.flatten(2).transpose(1, 2)`` -> (B, 144, E);
  the input must be exactly ``img_size`` (an assert in the original). ``pos_embed`` (1, 144, E) is
  added; no class token; ``mask_token`` (1, 1, E) is a parameter used only by training-time masking.
* ``blocks.i``: ``x + drop_path(attn(norm1(x)))`` then ``x + drop_path(mlp(norm2(x)))``;
  ``norm1``/``norm2`` LayerNorm(E) (eps 1e-5); ``attn.qkv`` Linear(E, 3E, bias=False) reshaped to
  (3, B, heads, N, E/heads), scale (E/heads)^-0.5, softmax, ``attn.proj`` Linear(E, E);
  ``mlp.fc1`` Linear(E, 4E) -> ReLU6 (not GELU) -> ``mlp.fc2`` Linear(4E, E). drop_path rates
  ``linspace(0, drop_path_rate, depth)``. Then ``norm`` LayerNorm(E) on ``x.float()``.
* ``feature`` = Sequential(Linear(144 E, E, bias=False), BatchNorm1d(E, eps=2e-5),
  Linear(E, num_features, bias=False), BatchNorm1d(num_features, eps=2e-5)) on the tokens flattened
  to (B, 144 E); it is the output (there is no ``features`` module in the ViT).
* Autocast, hard-wired whatever ``fp16`` says: on CUDA, ``attn.qkv``, ``attn.proj`` and the
  ``norm2``+``mlp`` branch run under ``torch.cuda.amp.autocast(True)`` (float16), the attention
  product/softmax under ``autocast(False)`` on ``q, k, v .float()``; ``norm1``, ``norm`` and
  ``feature`` under the caller's setting (float32 at inference).
* Training only: ``random_masking`` when ``training and mask_ratio > 0``; it is called without its
  ratio argument, so it always keeps ``int(144 * (1 - 0.1))`` tokens (default 0.1, whatever
  ``mask_ratio``), runs the blocks on those, and after ``norm`` puts ``mask_token`` back in the
  dropped places; gradient checkpointing per block when ``using_checkpoint``. Eval is deterministic.
* Sizes (arcface_torch's own models, counted; num_features 512): 4 + 11 * depth + 12 state_dict keys
  (150 for depth 12, 282 for 24, 546 for 48); parameters vit_t 19,137,792, vit_s 76,023,296,
  vit_b 113,833,472, vit_l 255,684,352 (``feature.0`` alone is 144 E^2).

fiqa's contract (:class:`~fiqa.backbones.base.TrunkTailBackbone`): ``trunk`` = everything up to
the flattened normed tokens (B, 144 E); ``tail`` = ``dropout`` (ours, p=0 by default: where
SER-FIQ drops) -> ``fc`` (property: ``feature[0:3]``, Linear-BN-Linear) -> ``features`` (property:
``feature[3]``, the final BatchNorm1d). ``amp=False`` drops the hard-wired autocast regions (then
the caller's autocast, or float32, applies throughout).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from fiqa.backbones.base import TrunkTailBackbone

TRAIN_MASK_RATIO = 0.1  # what arcface_torch's random_masking(x) applies whenever mask_ratio > 0


def _cuda_autocast(x: Tensor, enabled: bool, active: bool) -> contextlib.AbstractContextManager:
    """arcface_torch's ``torch.cuda.amp.autocast(enabled)`` (float16) when ``active`` and ``x`` is on
    CUDA (only CUDA ops feel it; elsewhere it is skipped, with no 'CUDA is not available' warning)."""
    if not (active and x.is_cuda):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16, enabled=enabled)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: per sample, zero the branch with probability p, else scale by 1 / (1 - p)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class PatchEmbed(nn.Module):
    """``proj``: Conv2d(3, E, p, stride p); (B, 3, H, W) -> (B, (H/p) * (W/p), E)."""

    def __init__(self, img_size: int, patch_size: int, in_channels: int, embed_dim: int):
        super().__init__()
        self.img_size, self.patch_size = int(img_size), int(patch_size)
        self.num_patches = (self.img_size // self.patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(
                f"the ViT takes {self.img_size}x{self.img_size} images (backbone.img_size), got {tuple(x.shape[-2:])}"
            )
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """``qkv`` Linear(E, 3E) -> per-head softmax(q k^T * scale) v -> ``proj`` Linear(E, E)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, amp: bool):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"backbone.embed_dim={dim} is not divisible by backbone.num_heads={num_heads}")
        self.num_heads, self.amp = int(num_heads), amp
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, e = x.shape
        with _cuda_autocast(x, True, self.amp):
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, e // self.num_heads).permute(2, 0, 3, 1, 4)
        with _cuda_autocast(x, False, self.amp):
            q, k, v = qkv[0].float(), qkv[1].float(), qkv[2].float()
            attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
            x = (attn @ v).transpose(1, 2).reshape(b, n, e)
        with _cuda_autocast(x, True, self.amp):
            return self.proj(x)


class Mlp(nn.Module):
    """``fc1`` -> ReLU6 -> ``fc2``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU6()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, qkv_bias: bool, drop_path: float, amp: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)  # norm1, norm2, attn, mlp: arcface_torch's registration order
        self.norm2 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, amp)
        self.mlp = Mlp(dim, mlp_hidden)
        self.drop_path, self.amp = float(drop_path), amp

    def forward(self, x: Tensor) -> Tensor:
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        with _cuda_autocast(x, True, self.amp):
            return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class ArcFaceViT(TrunkTailBackbone):
    """arcface_torch's ``VisionTransformer`` (norm_layer="ln"); see the module docstring.

    ``num_features`` = D (the embedding); ``mlp_hidden_dim`` defaults to ``int(embed_dim * mlp_ratio)``;
    ``drop_path_rate``, ``mask_ratio`` and ``using_checkpoint`` act in training only; ``amp`` keeps the
    original's hard-wired CUDA float16 autocast regions (settable later: ``model.amp = False``);
    ``dropout`` is fiqa's (SER-FIQ, before ``feature``).
    """

    def __init__(
        self,
        num_features: int = 512,
        embed_dim: int = 256,
        depth: int = 12,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        mlp_hidden_dim: int | None = None,
        qkv_bias: bool = False,
        img_size: int = 112,
        patch_size: int = 9,
        in_channels: int = 3,
        drop_path_rate: float = 0.0,
        mask_ratio: float = 0.0,
        using_checkpoint: bool = False,
        amp: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if int(depth) < 1 or int(embed_dim) < 1:
            raise ValueError(f"backbone.depth and backbone.embed_dim must be positive, got {depth}, {embed_dim}")
        if int(img_size) // int(patch_size) < 1:
            raise ValueError(f"backbone.img_size={img_size} is smaller than backbone.patch_size={patch_size}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"backbone.dropout must be in [0, 1), got {dropout}")
        e = int(embed_dim)
        hidden = int(mlp_hidden_dim) if mlp_hidden_dim is not None else int(e * mlp_ratio)
        self.embed_dim, self.depth, self.num_heads = e, int(depth), int(num_heads)
        self.mask_ratio, self.using_checkpoint = float(mask_ratio), bool(using_checkpoint)

        # registration order = arcface_torch's state_dict order: pos_embed, mask_token, patch_embed, blocks, ...
        self.pos_embed = nn.Parameter(torch.zeros(1, (int(img_size) // int(patch_size)) ** 2, e))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, e))
        self.patch_embed = PatchEmbed(img_size, patch_size, in_channels, e)
        self.num_patches = self.patch_embed.num_patches
        rates = torch.linspace(0, float(drop_path_rate), self.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(
            [Block(e, self.num_heads, hidden, bool(qkv_bias), rates[i], bool(amp)) for i in range(self.depth)]
        )
        self.norm = nn.LayerNorm(e)
        self.embedding_dim = int(num_features)
        self.feature_dim = e * self.num_patches
        self.feature = nn.Sequential(
            nn.Linear(self.feature_dim, e, bias=False),
            nn.BatchNorm1d(e, eps=2e-5),
            nn.Linear(e, self.embedding_dim, bias=False),
            nn.BatchNorm1d(self.embedding_dim, eps=2e-5),
        )
        self.dropout = nn.Dropout(dropout)
        self.amp = amp

        nn.init.normal_(self.mask_token, std=0.02)  # arcface_torch's init
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def amp(self) -> bool:
        """Whether the blocks keep arcface_torch's hard-wired CUDA float16 autocast regions."""
        return self._amp

    @amp.setter
    def amp(self, enabled: bool) -> None:
        self._amp = bool(enabled)
        for block in self.blocks:
            block.amp = block.attn.amp = self._amp

    @property
    def fc(self) -> nn.Sequential:
        """``feature[0:3]`` (Linear -> BatchNorm1d -> Linear): fiqa's ``fc`` step of the tail."""
        return self.feature[:3]

    @property
    def features(self) -> nn.BatchNorm1d:
        """``feature[3]``, the final BatchNorm1d: fiqa's ``features`` step of the tail."""
        return self.feature[3]

    def _random_masking(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keep a random ``int(N * (1 - 0.1))`` tokens per sample; returns them and the restoring order."""
        n, length, d = x.shape
        keep = int(length * (1 - TRAIN_MASK_RATIO))
        ids_shuffle = torch.argsort(torch.rand(n, length, device=x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        kept = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
        return kept, ids_restore

    def trunk(self, images: Tensor) -> Tensor:
        """Images (B, 3, img_size, img_size) -> the normed tokens flattened, (B, num_patches * embed_dim)."""
        b = images.shape[0]
        x = self.patch_embed(images) + self.pos_embed
        masked = self.training and self.mask_ratio > 0
        if masked:
            x, ids_restore = self._random_masking(x)
        for block in self.blocks:
            if self.using_checkpoint and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.norm(x.float())
        if masked:
            fill = self.mask_token.to(x.dtype).expand(b, ids_restore.shape[1] - x.shape[1], -1)
            x = torch.gather(torch.cat([x, fill], dim=1), 1, ids_restore[:, :, None].expand(-1, -1, x.shape[2]))
        return torch.reshape(x, (b, self.num_patches * self.embed_dim))


#: arcface_torch ``get_model`` names -> our constructor arguments (the table of the module docstring).
VIT_ARCHS: dict[str, dict] = {
    "vit_t": {"embed_dim": 256, "depth": 12, "drop_path_rate": 0.1, "mask_ratio": 0.1},
    "vit_t_dp005_mask0": {"embed_dim": 256, "depth": 12, "drop_path_rate": 0.05, "mask_ratio": 0.0},
    "vit_s": {"embed_dim": 512, "depth": 12, "drop_path_rate": 0.1, "mask_ratio": 0.1},
    "vit_s_dp005_mask_0": {"embed_dim": 512, "depth": 12, "drop_path_rate": 0.05, "mask_ratio": 0.0},
    "vit_b": {"embed_dim": 512, "depth": 24, "drop_path_rate": 0.1, "mask_ratio": 0.1, "using_checkpoint": True},
    "vit_b_dp005_mask_005": {
        "embed_dim": 512,
        "depth": 24,
        "drop_path_rate": 0.05,
        "mask_ratio": 0.05,
        "using_checkpoint": True,
    },
    "vit_l_dp005_mask_005": {
        "embed_dim": 768,
        "depth": 24,
        "drop_path_rate": 0.05,
        "mask_ratio": 0.05,
        "using_checkpoint": True,
    },
    "vit_h": {"embed_dim": 1024, "depth": 48, "drop_path_rate": 0.1, "mask_ratio": 0.0, "using_checkpoint": True},
}


def arcface_vit(name: str = "vit_t", **kwargs) -> ArcFaceViT:
    """arcface_torch ``get_model(name)`` for a ViT name (keys of :data:`VIT_ARCHS`); ``kwargs`` override."""
    if name not in VIT_ARCHS:
        raise ValueError(f"arcface_torch ViT {name!r} is not known; choose one of {list(VIT_ARCHS)}")
    return ArcFaceViT(**{**VIT_ARCHS[name], **kwargs})
