"""ViTGaL (Phan et al., ACCV 2022) in plain torch: an XCiT backbone with patch size 16, the multi-atrous block, one
class-attention layer, and the local-descriptor autoencoder. No timm (it drags in torchvision).

Shapes: ``B`` frames, ``C`` channels (``embed_dim``), ``h`` heads, ``N = Hp * Wp`` patch tokens of a
``Hp x Wp = H/16 x W/16`` grid; every tensor is float32 unless autocast says otherwise.

Parameter names follow facebookresearch/xcit and the authors' ViTGaL code (``patch_embed.proj.<i>.<j>``,
``pos_embeder.token_projection``, ``blocks.<i>.{norm1,attn.qkv,attn.temperature,attn.proj,norm3,local_mp.conv1,
local_mp.bn,local_mp.conv2,norm2,mlp.fc1,mlp.fc2,gamma1,gamma2,gamma3}``, ``local_atrous.*``,
``cls_attn_blocks.<i>.*``, ``norm``), so that loading their checkpoint is a prefix rename:
see :func:`convert_checkpoint`.

Two behaviours of the released code are kept because the released weights were trained with them:

* in a class-attention block the patch tokens go through the block's residual unchanged by the attention, except
  that the block adds its *normalised input* to them (XCiT's ``cat([cls, norm1(x)[:, 1:]])`` then ``x + ...``) and,
  with ``tokens_norm``, adds them to themselves after ``norm2`` (XCiT's ``x_res + cat([cls, x[:, 1:]])``);
* ViTGaL's forward pass applies its single class-attention block **twice** (a plain pass, then one that returns the
  attention): ``class_attention_passes=2``. ``1`` is the paper's description.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PATCH_SIZE",
    "ClassAttention",
    "ClassAttentionBlock",
    "LocalAutoencoder",
    "Mlp",
    "MultiAtrous",
    "ViTGaLConfig",
    "ViTGaLNet",
    "ViTGaLOutput",
    "XCABlock",
    "XCiTBackbone",
    "convert_checkpoint",
    "cross_covariance_attention",
]

PATCH_SIZE = 16
_LN_EPS = 1e-6


@dataclass(frozen=True)
class ViTGaLConfig:
    """Architecture of a ViTGaL network (the default is XCiT-S12/16 with a 128-d autoencoder, as released).

    Attributes:
        embed_dim: token width ``C`` (a multiple of 8 and of ``num_heads``).
        depth: number of XCA blocks.
        num_heads: attention heads of the XCA blocks and of the class attention.
        mlp_ratio: hidden width of every MLP, as a multiple of ``C``.
        local_dim: code size of the local-descriptor autoencoder; ``None``: no autoencoder (raw ``C``-d tokens).
        dilations: rates of the multi-atrous block's dilated 3x3 convolutions (five in the paper).
        class_attention_layers: class-attention blocks of the backbone (one in ViTGaL).
        class_attention_passes: 2 applies the last block twice, as the released code does; 1 once.
        tokens_norm: class-attention ``norm2`` over every token (XCiT-S12's setting) or over the CLS token only.
        eta: initial LayerScale value (only matters for a fresh, untrained network).
    """

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    local_dim: int | None = 128
    dilations: tuple[int, ...] = (1, 3, 6, 9, 12)
    class_attention_layers: int = 1
    class_attention_passes: int = 2
    tokens_norm: bool = True
    eta: float = 1.0

    def __post_init__(self) -> None:
        c = self.embed_dim
        if c < 8 or c % 8 or c % self.num_heads:
            raise ValueError(f"embed_dim {c} must be a multiple of 8 and of num_heads {self.num_heads}")
        if self.depth < 1 or self.class_attention_layers < 1 or self.class_attention_passes not in (1, 2):
            raise ValueError("depth and class_attention_layers must be >= 1, class_attention_passes 1 or 2")
        if not self.dilations or min(self.dilations) < 1 or c // (len(self.dilations) + 1) < 1:
            raise ValueError(f"bad dilations {self.dilations} for embed_dim {c}")
        if self.local_dim is not None and self.local_dim < 1:
            raise ValueError(f"local_dim must be >= 1 or None, got {self.local_dim}")

    @property
    def descriptor_dim(self) -> int:
        """Length of a local descriptor: ``local_dim``, or ``embed_dim`` without an autoencoder."""
        return self.embed_dim if self.local_dim is None else self.local_dim


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2`` on the last axis (hidden width ``ratio * dim``)."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, int(dim * ratio))
        self.fc2 = nn.Linear(int(dim * ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(F.gelu(self.fc1(x)))
        return out


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out))


class ConvPatchEmbed(nn.Module):
    """Four stride-2 3x3 conv + BatchNorm layers with GELU between them: ``(B, 3, H, W)`` -> ``(B, C, H/16, W/16)``
    (sides rounded up)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            _conv_bn(3, dim // 8), nn.GELU(), _conv_bn(dim // 8, dim // 4), nn.GELU(),
            _conv_bn(dim // 4, dim // 2), nn.GELU(), _conv_bn(dim // 2, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x)
        return out


class FourierPositionalEncoding(nn.Module):
    """XCiT's positional encoding: sine/cosine features of the normalised row and column (``2 * hidden`` channels)
    projected by a 1x1 convolution to ``C``; computed for any grid, so no interpolation is ever needed."""

    def __init__(self, dim: int, hidden: int = 32, temperature: float = 10000.0) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(2 * hidden, dim, kernel_size=1)
        self.hidden, self.temperature = hidden, temperature

    def forward(self, grid: tuple[int, int]) -> torch.Tensor:
        """``(1, C, Hp, Wp)`` encoding of a ``grid=(Hp, Wp)``."""
        hp, wp = grid
        dev = self.token_projection.weight.device
        scale, eps = 2 * math.pi, 1e-6
        y = torch.arange(1, hp + 1, dtype=torch.float32, device=dev) / (hp + eps) * scale
        x = torch.arange(1, wp + 1, dtype=torch.float32, device=dev) / (wp + eps) * scale
        i = torch.arange(self.hidden, dtype=torch.float32, device=dev)
        dim_t = self.temperature ** (2 * torch.div(i, 2, rounding_mode="floor") / self.hidden)

        def features(v: torch.Tensor) -> torch.Tensor:  # (L,) -> (L, hidden), sin/cos interleaved
            p = v[:, None] / dim_t
            return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

        fy = features(y)[:, None, :].expand(hp, wp, self.hidden)
        fx = features(x)[None, :, :].expand(hp, wp, self.hidden)
        pos = torch.cat((fy, fx), dim=2).permute(2, 0, 1)[None]
        out: torch.Tensor = self.token_projection(pos.to(self.token_projection.weight.dtype))
        return out


def cross_covariance_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               temperature: torch.Tensor) -> torch.Tensor:
    """XCA on per-head tensors ``(B, h, d, N)`` (channels first): queries and keys are L2-normalised along the
    tokens, ``A = softmax(temperature * q k^T)`` is ``(B, h, d, d)`` (channels x channels, linear in ``N``), and the
    result ``A v`` is ``(B, h, d, N)``. ``temperature`` is ``(h, 1, 1)``."""
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature
    return attn.softmax(dim=-1) @ v


class XCA(nn.Module):
    """Cross-covariance attention over ``(B, N, C)`` tokens (see :func:`cross_covariance_attention`)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 4, 1)
        out = cross_covariance_attention(qkv[0], qkv[1], qkv[2], self.temperature)  # (B, h, d, N)
        res: torch.Tensor = self.proj(out.permute(0, 3, 1, 2).reshape(b, n, c))
        return res


class LPI(nn.Module):
    """Local patch interaction: depthwise 3x3 conv, GELU, BatchNorm, depthwise 3x3 conv on the token grid."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        y = x.transpose(1, 2).reshape(b, c, *grid)
        y = self.conv2(self.bn(F.gelu(self.conv1(y))))
        out: torch.Tensor = y.reshape(b, c, n).transpose(1, 2)
        return out


class XCABlock(nn.Module):
    """XCiT layer: ``x += g1 * XCA(LN x)``, ``x += g3 * LPI(LN x)``, ``x += g2 * MLP(LN x)`` on ``(B, N, C)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eta: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = XCA(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.local_mp = LPI(dim)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, mlp_ratio)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.gamma3 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = x + self.gamma1 * self.attn(self.norm1(x))
        x = x + self.gamma3 * self.local_mp(self.norm3(x), grid)
        out: torch.Tensor = x + self.gamma2 * self.mlp(self.norm2(x))
        return out


class ClassAttention(nn.Module):
    """Class attention (CaiT): the CLS token (index 0) is the only query, keys and values are every token.

    ``forward`` takes ``(B, 1 + N, C)`` and returns ``(B, 1 + N, C)`` (the projected CLS output, then the input's
    patch tokens unchanged) and the attention ``(B, h, 1 + N)`` of the CLS query over all tokens (itself first).
    The projection is one ``qkv`` linear layer, as in the released weights; only its query rows meet the CLS token.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, :1], w[:c], bias[:c]).reshape(b, h, 1, d)
        kv = F.linear(x, w[c:], bias[c:]).reshape(b, n, 2, h, d).permute(2, 0, 3, 1, 4)  # (2, B, h, N, d)
        attn = ((q * self.scale) @ kv[0].transpose(-2, -1)).softmax(dim=-1)  # (B, h, 1, N)
        cls = self.proj((attn @ kv[1]).transpose(1, 2).reshape(b, 1, c))
        return torch.cat([cls, x[:, 1:]], dim=1), attn[:, :, 0]


class ClassAttentionBlock(nn.Module):
    """CaiT/XCiT class-attention block on ``(B, 1 + N, C)``; returns the tokens and the CLS attention
    ``(B, h, 1 + N)``. Only the CLS token goes through the MLP (see the module docstring for the patch tokens)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eta: float, tokens_norm: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = ClassAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, mlp_ratio)
        self.gamma1 = nn.Parameter(eta * torch.ones(dim))
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))
        self.tokens_norm = tokens_norm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, attn = self.attn(self.norm1(x))
        x = x + self.gamma1 * y
        x = self.norm2(x) if self.tokens_norm else torch.cat([self.norm2(x[:, :1]), x[:, 1:]], dim=1)
        cls = self.gamma2 * self.mlp(x[:, :1])
        return x + torch.cat([cls, x[:, 1:]], dim=1), attn


class MultiAtrous(nn.Module):
    """ViTGaL's multi-atrous block on the final ``(B, N, C)`` tokens of a ``grid``.

    Dilated 3x3 convolutions with ``C // (n + 1)`` channels each (``n`` rates) and a global-average-pooling branch
    (1x1 conv to the remaining channels, GELU, broadcast over the grid) are concatenated to ``C`` channels, then
    GELU, BatchNorm and a depthwise 3x3 conv; back to tokens with a LayerScaled skip, then ``LN -> MLP`` with a
    skip (a ViT block's FFN). Output ``(B, N, C)``.
    """

    def __init__(self, dim: int, dilations: tuple[int, ...], mlp_ratio: float, eta: float) -> None:
        super().__init__()
        branch = dim // (len(dilations) + 1)
        self.dilated_convs = nn.ModuleList(
            nn.Conv2d(dim, branch, 3, dilation=r, padding=r) for r in dilations)
        self.gap_branch = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dim, dim - len(dilations) * branch, 1),
                                        nn.GELU())
        self.norm = nn.BatchNorm2d(dim)
        self.depthwise = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.gamma = nn.Parameter(eta * torch.ones(dim))
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, mlp_ratio)
        self.gamma2 = nn.Parameter(eta * torch.ones(dim))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        fmap = x.transpose(1, 2).reshape(b, c, *grid)
        parts = [conv(fmap) for conv in self.dilated_convs]
        parts.append(self.gap_branch(fmap).expand(-1, -1, *grid))
        y = self.depthwise(self.norm(F.gelu(torch.cat(parts, dim=1))))
        x = x + self.gamma * y.reshape(b, c, n).transpose(1, 2)
        out: torch.Tensor = x + self.gamma2 * self.mlp(self.norm2(x))
        return out


class XCiTBackbone(nn.Module):
    """XCiT with ViTGaL's multi-atrous block and class attention (the authors' ``XCiTRetrievalv2``, without the
    ArcFace head). ``forward`` takes ``(B, 3, H, W)`` normalised RGB (``H``, ``W`` multiples of 16) and returns
    ``(global (B, C), patch tokens (B, N, C), CLS attention over the patches (B, h, N), grid (Hp, Wp))``; the
    tokens and the global descriptor are after the final LayerNorm, not L2-normalised."""

    def __init__(self, config: ViTGaLConfig) -> None:
        super().__init__()
        c, cfg = config.embed_dim, config
        self.config = config
        self.patch_embed = ConvPatchEmbed(c)
        self.pos_embeder = FourierPositionalEncoding(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.blocks = nn.ModuleList(XCABlock(c, cfg.num_heads, cfg.mlp_ratio, cfg.eta) for _ in range(cfg.depth))
        self.local_atrous = MultiAtrous(c, cfg.dilations, cfg.mlp_ratio, cfg.eta)
        self.cls_attn_blocks = nn.ModuleList(
            ClassAttentionBlock(c, cfg.num_heads, cfg.mlp_ratio, cfg.eta, cfg.tokens_norm)
            for _ in range(cfg.class_attention_layers))
        self.norm = nn.LayerNorm(c, eps=_LN_EPS)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
        fmap = self.patch_embed(x)
        b = fmap.shape[0]
        grid = (int(fmap.shape[2]), int(fmap.shape[3]))
        tokens = (fmap + self.pos_embeder(grid)).flatten(2).transpose(1, 2)
        for blk in self.blocks:
            tokens = blk(tokens, grid)
        tokens = self.local_atrous(tokens, grid)
        x = torch.cat([self.cls_token.expand(b, -1, -1).to(tokens.dtype), tokens], dim=1)
        attn = x.new_zeros(0)
        last = len(self.cls_attn_blocks) - 1
        for i, blk in enumerate(self.cls_attn_blocks):
            x, attn = blk(x)
            if i == last and self.config.class_attention_passes == 2:
                x, attn = blk(x)
        x = self.norm(x)
        return x[:, 0], x[:, 1:], attn[:, :, 1:], grid


class LocalAutoencoder(nn.Module):
    """The local-descriptor autoencoder (the authors' ``XCiTRetrievalLocalReductionAE`` without the backbone and
    the training head): ``encoder`` (``C -> local_dim``) gives the reduced descriptors, ``decoder``
    (``local_dim -> C``) reconstructs the tokens, and a class-attention layer over the reconstruction (trained with
    cross-entropy) gives another keypoint attention. ``forward((B, N, C))`` returns ``(codes (B, N, local_dim),
    reconstruction (B, N, C), attention over the patches (B, h, N))``."""

    def __init__(self, config: ViTGaLConfig) -> None:
        super().__init__()
        assert config.local_dim is not None
        c = config.embed_dim
        self.encoder = nn.Linear(c, config.local_dim)
        self.decoder = nn.Linear(config.local_dim, c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.cls_attn_blocks = nn.ModuleList([ClassAttentionBlock(c, config.num_heads, config.mlp_ratio, config.eta,
                                                                  config.tokens_norm)])
        self.norm = nn.LayerNorm(c, eps=_LN_EPS)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes = self.encoder(tokens)
        recon = self.decoder(codes)
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(recon.dtype), recon], dim=1)
        attn = x.new_zeros(0)
        for blk in self.cls_attn_blocks:
            x, attn = blk(x)
        return codes, recon, attn[:, :, 1:]


class ViTGaLOutput(NamedTuple):
    """One forward pass of :class:`ViTGaLNet`.

    Attributes:
        global_descriptor: ``(B, C)`` CLS output (after LayerNorm, not L2-normalised).
        tokens: ``(B, N, C)`` output patch tokens, row-major over the grid.
        local: ``(B, N, D)`` local descriptors: the autoencoder codes (``D = local_dim``) or the tokens.
        attention: ``(B, h, N)`` the backbone's CLS attention over the patches.
        ae_attention: ``(B, h, N)`` the autoencoder's CLS attention, or ``None`` without an autoencoder.
        grid: ``(Hp, Wp)`` with ``N = Hp * Wp``.
    """

    global_descriptor: torch.Tensor
    tokens: torch.Tensor
    local: torch.Tensor
    attention: torch.Tensor
    ae_attention: torch.Tensor | None
    grid: tuple[int, int]


class ViTGaLNet(nn.Module):
    """Backbone plus (when ``config.local_dim`` is set) the local autoencoder; see :class:`ViTGaLOutput`."""

    def __init__(self, config: ViTGaLConfig | None = None) -> None:
        super().__init__()
        self.config = config or ViTGaLConfig()
        self.backbone = XCiTBackbone(self.config)
        self.autoencoder = None if self.config.local_dim is None else LocalAutoencoder(self.config)

    def forward(self, x: torch.Tensor) -> ViTGaLOutput:
        glob, tokens, attn, grid = self.backbone(x)
        if self.autoencoder is None:
            return ViTGaLOutput(glob, tokens, tokens, attn, None, grid)
        codes, _, ae_attn = self.autoencoder(tokens)
        return ViTGaLOutput(glob, tokens, codes, attn, ae_attn, grid)


# The authors' checkpoint (``torch.save({"model": state_dict, ...})`` of their ``XCiTRetrievalLocalReductionAE``,
# which holds the trained backbone as ``retrieval_back_bone``) -> this module's names.
_AE_RENAMES = (
    ("retrieval_back_bone.", "backbone."),
    ("whitening_layer.", "autoencoder.encoder."),
    ("ae_decoder_layer.", "autoencoder.decoder."),
    ("cls_attn_blocks.", "autoencoder.cls_attn_blocks."),
    ("norm.", "autoencoder.norm."),
    ("cls_token", "autoencoder.cls_token"),
)
_DROPPED = ("head.", "backbone.head.", "local_head.")


def convert_checkpoint(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in any of the accepted layouts -> :class:`ViTGaLNet`'s names.

    * this module's own layout (``backbone.*``, ``autoencoder.*``): unchanged;
    * the authors' backbone + autoencoder checkpoint (keys ``retrieval_back_bone.*``, ``whitening_layer.*``,
      ``ae_decoder_layer.*``, ``cls_token``, ``cls_attn_blocks.*``, ``norm.*``): renamed by ``_AE_RENAMES``;
    * the authors' backbone-only checkpoint (``xcit_retrievalv2_small_12_p16``: ``patch_embed.*``, ``blocks.*``,
      ``local_atrous.*``, ...): prefixed with ``backbone.`` (use it with ``local_dim=None``).

    A DistributedDataParallel ``module.`` prefix is stripped first; classification heads (``head.*``, the ArcFace
    weight) are dropped. The result is checked against the network by ``plugins.weights.load_into``.
    """
    items = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    if any(k.startswith("retrieval_back_bone.") for k in items):
        out: dict[str, torch.Tensor] = {}
        for key, value in items.items():
            new = next((dst + key[len(src):] for src, dst in _AE_RENAMES if key.startswith(src)), key)
            out[new] = value
    elif any(k.startswith(("backbone.", "autoencoder.")) for k in items):
        out = dict(items)
    else:
        out = {f"backbone.{k}": v for k, v in items.items()}
    return {k: v for k, v in out.items() if not k.startswith(_DROPPED)}
