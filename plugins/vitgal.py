"""``vitgal``: ViTGaL (Phan et al., "Patch Embedding as Local Features: Unifying Deep Local and Global Features via
Vision Transformer for Image Retrieval", ACCV 2022): one XCiT forward pass gives both kinds of feature.

Network (``plugins._vitgal_net``, written here in plain torch): XCiT with patch size 16 (a 4-layer conv patch
embedding, Fourier positional encoding, XCA + local-patch-interaction + MLP blocks; XCiT-S12/16 by default:
``embed_dim=384, depth=12, num_heads=8``), the multi-atrous block on the final ``H/16 x W/16`` token map, one
class-attention layer, and the local-descriptor autoencoder (a one-layer encoder ``C -> local_dim`` and decoder,
with its own class-attention layer).

Per frame (single scale): RGB scaled to [0, 1] and ImageNet-normalised, resized so that the longer side is at most
``max_side`` and both sides are multiples of 16 (rounded down, as the authors do) ->

* **global descriptor**: the CLS output (``C``-d), L2-normalised;
* **local descriptors**: the output patch tokens encoded by the autoencoder (``local_dim``-d; the raw ``C``-d
  tokens with ``local_dim=None``), L2-normalised, located at their patch centres (mapped to frame pixels);
* **keypoint scores**: the CLS attention over the patches (of the autoencoder's class attention by default, as the
  authors' ``extract_local_feature.py`` does; ``keypoint_attention="backbone"`` for the backbone's), each head
  divided by its maximum, averaged over heads, and scaled so that the frame's patches average 1. The
  ``max_keypoints`` (1000) best patches whose score exceeds ``score_threshold`` are kept. The default threshold
  0.9375 is the lowest one the authors' schedule reaches (60 halved until enough patches pass); at a single scale
  their box NMS never suppresses anything (patches do not overlap), so this is their selection.

Weights: **no ViTGaL weights ship in any package here**, and nothing is downloaded: ``weights=path`` is required
(a missing file raises :class:`~plugins.errors.WeightsError`); its sha256 is part of the snapshot identity.
Accepted layouts (:func:`plugins._vitgal_net.convert_checkpoint`):

* the authors' checkpoint of github.com/PXThanhLam/ViTGaL (``torch.save({"model": state_dict, ...})``, e.g.
  ``xcit_small_12_p16_retrieval_reduction_ae/checkpoint.pth``): the backbone is under ``retrieval_back_bone.``
  with facebookresearch/xcit names (``patch_embed.proj.{0,2,4,6}.{0,1}`` conv+BatchNorm, ``pos_embeder.
  token_projection``, ``blocks.<i>.{norm1, attn.qkv, attn.temperature, attn.proj, norm3, local_mp.{conv1, bn,
  conv2}, norm2, mlp.{fc1, fc2}, gamma1..3}``, ``cls_attn_blocks.0.{norm1, attn.qkv, attn.proj, norm2, mlp,
  gamma1, gamma2}``, ``norm``) plus ViTGaL's ``local_atrous.{dilated_convs.<0..4>, gap_branch.1, norm,
  depthwise, gamma, norm2, mlp, gamma2}``; the autoencoder is ``whitening_layer`` (encoder), ``ae_decoder_layer``
  (decoder), ``cls_token``, ``cls_attn_blocks.0`` and ``norm``. Mapping: ``retrieval_back_bone.X -> backbone.X``,
  ``whitening_layer -> autoencoder.encoder``, ``ae_decoder_layer -> autoencoder.decoder``, the other autoencoder
  keys -> ``autoencoder.<same name>``; classification heads (``head.*``, ArcFace) are dropped; the other entries of
  the file (optimizer, epoch, args) are ignored;
* their backbone-only checkpoint (``xcit_retrievalv2_small_12_p16``; keys without prefix): ``X -> backbone.X``,
  with ``local_dim=None``;
* this module's own ``state_dict`` (``backbone.*``, ``autoencoder.*``), with or without a ``{"model": ...}`` or
  ``{"state_dict": ...}`` wrapper; a DDP ``module.`` prefix is stripped.

The file must match the architecture options exactly (keys and shapes, checked strictly: a mismatch is a
``WeightsError`` naming the keys). facebookresearch/xcit ImageNet checkpoints lack the multi-atrous block and the
trained class attention, so they are refused rather than half-loaded.

Assumptions, where the paper and the code leave room: the released code applies its single class-attention
block twice (``class_attention_passes=2``, the default since the weights were trained so); the dilation rates are
the code's ``(1, 3, 6, 9, 12)``; the patch centre of grid cell ``(i, j)`` is pixel ``(16 j + 7.5, 16 i + 7.5)`` of
the network input.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from l2g_core import FrameFeatures
from plugins.base import Extractor, RGBBatch
from plugins.errors import WeightsError
from plugins.options import RUNTIME, ExtractorOptions, MaxSide, Number, PositiveInt, WeightsFile

if TYPE_CHECKING:
    import torch

    from plugins._vitgal_net import ViTGaLConfig

__all__ = ["ViTGaLExtractor", "ViTGaLOptions", "read_checkpoint", "select_keypoints"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class ViTGaLOptions(ExtractorOptions):
    """Options of ``vitgal``. Every option changes the features (and is part of the snapshot identity) except
    ``fp16``; ``weights`` enters the identity as the sha256 of the file.

    Attributes:
        weights: the checkpoint (required; see the module docstring for the layouts).
        embed_dim: token width ``C`` (XCiT-S: 384).
        depth: XCA blocks (XCiT-S12: 12).
        num_heads: attention heads (XCiT-S: 8).
        local_dim: the autoencoder's code size (128 as released); ``None``: no autoencoder, ``C``-d locals.
        dilations: rates of the multi-atrous block's dilated convolutions.
        class_attention_passes: 2 applies the class-attention block twice, as the released code; 1 once.
        keypoint_attention: which CLS attention scores the patches: ``"autoencoder"`` (needs ``local_dim``) or
            ``"backbone"``.
        max_keypoints: best patches kept per frame.
        score_threshold: a kept patch's normalised attention (1 = the frame's mean) must exceed this.
        max_side: longer side of the network input in pixels (frames are never enlarged).
        fp16: fp16 autocast on CUDA (ignored on the CPU); runtime only.
    """

    weights: Annotated[Path, WeightsFile()]
    embed_dim: PositiveInt = 384
    depth: PositiveInt = 12
    num_heads: PositiveInt = 8
    local_dim: PositiveInt | None = 128
    dilations: tuple[PositiveInt, ...] = (1, 3, 6, 9, 12)
    class_attention_passes: Literal[1, 2] = 2
    keypoint_attention: Literal["autoencoder", "backbone"] = "autoencoder"
    max_keypoints: PositiveInt = 1000
    score_threshold: Annotated[Number, Field(ge=0.0)] = 0.9375
    max_side: MaxSide = 512
    fp16: Annotated[bool, RUNTIME] = True

    @model_validator(mode="before")
    @classmethod
    def _weights_required(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("weights") is None:
            raise WeightsError("vitgal needs weights=/path/to/checkpoint.pth: no package ships ViTGaL weights and "
                               "extractors never download (the authors' checkpoints: github.com/PXThanhLam/ViTGaL)")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ViTGaLOptions:
        if self.keypoint_attention == "autoencoder" and self.local_dim is None:
            raise ValueError("keypoint_attention='autoencoder' needs the autoencoder (local_dim)")
        self.config()  # architecture checks
        return self

    def config(self) -> ViTGaLConfig:
        """The network architecture these options describe.

        Raises:
            ValueError: an impossible architecture (``embed_dim`` not a multiple of 8 and of ``num_heads``, ...).
        """
        from plugins._vitgal_net import ViTGaLConfig

        return ViTGaLConfig(embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                            local_dim=self.local_dim, dilations=tuple(self.dilations),
                            class_attention_passes=self.class_attention_passes)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (``weights_only`` loading; ``argparse.Namespace`` allowed, which the
    authors' training script stores under ``"args"``), unwrapped from ``{"model": ...}``/``{"state_dict": ...}``.

    Raises:
        WeightsError: the file is missing, unreadable, or holds no state dict.
    """
    import torch

    if not path.is_file():
        raise WeightsError(f"ViTGaL weights {str(path)!r} do not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors differ by torch version; all mean "not a weights file"
        raise WeightsError(f"ViTGaL: cannot read {str(path)!r} as a torch checkpoint ({exc})") from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"ViTGaL: {str(path)!r} does not hold a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise WeightsError(f"ViTGaL: {str(path)!r} holds no tensors")
    return state


def select_keypoints(attention: torch.Tensor, max_keypoints: int,
                     threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoint selection from a CLS attention ``(B, h, N)`` (float): each head divided by its maximum, averaged
    over heads, scaled to mean 1 over the ``N`` patches; then the ``k = min(max_keypoints, N)`` best per frame.

    Returns:
        ``(scores (B, k) float32, indices (B, k) int64)`` in descending score order; a slot whose score is not
        above ``threshold`` has score ``-1`` (drop it).
    """
    import torch

    a = attention.float()
    a = a / a.amax(dim=-1, keepdim=True).clamp_min(1e-12)
    score = a.mean(dim=1)
    score = score / score.mean(dim=-1, keepdim=True).clamp_min(1e-12)
    top, idx = torch.topk(score, min(max_keypoints, score.shape[-1]), dim=-1)
    return torch.where(top > threshold, top, torch.full_like(top, -1.0)), idx


class ViTGaLExtractor(Extractor):
    """ViTGaL: global descriptor, local descriptors and keypoint scores from one XCiT forward pass.

    Args:
        options: :class:`ViTGaLOptions` (or a mapping of them; ``weights`` is required).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    name = "vitgal"
    Options: ClassVar[type[ExtractorOptions]] = ViTGaLOptions
    opts: ViTGaLOptions

    def __init__(self, options: ViTGaLOptions | Mapping[str, Any] | None = None, *,
                 device: str | None = "auto") -> None:
        super().__init__(options, device=device)
        self.local_dim = self.opts.local_dim or self.opts.embed_dim
        self.global_dim = self.opts.embed_dim
        self._net: Any = None

    def _setup(self) -> None:
        from plugins._vitgal_net import ViTGaLNet, convert_checkpoint
        from plugins.weights import load_into

        path = Path(self.opts.weights).expanduser()
        net = ViTGaLNet(self.opts.config())
        load_into(net, convert_checkpoint(read_checkpoint(path)), what=f"ViTGaL ({path})")
        self._net = net.eval().to(self.device)

    def _close(self) -> None:
        self._net = None

    def _extract(self, frames: RGBBatch) -> list[FrameFeatures]:
        from plugins._torch import in_chunks

        return in_chunks(frames, self.device, self._chunk)

    def _forward(self, frames: RGBBatch) -> tuple[Any, torch.Tensor, tuple[int, int]]:
        """Network output (:class:`~plugins._vitgal_net.ViTGaLOutput`), the scoring attention ``(B, h, N)`` and the
        network input size ``(h, w)``; call under ``torch.inference_mode``."""
        import torch

        from plugins._image import fit_size
        from plugins._torch import maybe_autocast, resize, to_device
        from plugins._vitgal_net import PATCH_SIZE

        x = to_device(frames, self.device) / 255.0
        size = fit_size(x.shape[-2], x.shape[-1], self.opts.max_side, multiple=PATCH_SIZE)
        x = resize(x, size)
        mean = torch.tensor(_IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(_IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        with maybe_autocast(self.device, self.opts.fp16):
            res = self._net((x - mean) / std)
        attn = res.ae_attention if self.opts.keypoint_attention == "autoencoder" else res.attention
        assert attn is not None
        return res, attn, size

    def _chunk(self, frames: RGBBatch) -> list[FrameFeatures]:
        import torch
        import torch.nn.functional as F

        from plugins._image import map_to_frame
        from plugins._vitgal_net import PATCH_SIZE

        res, attn, net_size = self._forward(frames)
        scores, idx = select_keypoints(attn, self.opts.max_keypoints, self.opts.score_threshold)
        local = torch.gather(res.local.float(), 1, idx[..., None].expand(-1, -1, res.local.shape[-1]))
        local = F.normalize(local, dim=-1)
        glob = F.normalize(res.global_descriptor.float(), dim=-1)
        wp = res.grid[1]
        xy = torch.stack([(idx % wp).float(), torch.div(idx, wp, rounding_mode="floor").float()], dim=-1)
        xy = (xy + 0.5) * PATCH_SIZE - 0.5
        scores_np, local_np, xy_np, glob_np = (t.cpu().numpy() for t in (scores, local, xy, glob))
        frame_size = (int(frames.shape[1]), int(frames.shape[2]))
        out = []
        for b in range(frames.shape[0]):
            keep = scores_np[b] > 0
            kp = map_to_frame(xy_np[b][keep], net_size, frame_size)
            out.append(FrameFeatures.create(local_np[b][keep], kp, scores_np[b][keep], glob_np[b], frame_size))
        return out

    def attention_map(self, frames: RGBBatch) -> np.ndarray:
        """``(B, Hp, Wp)`` float32 normalised keypoint scores of every patch of a validated batch (for inspection
        and tests); the same scores as :meth:`extract` gives before selection."""
        import torch

        self.setup()
        with torch.inference_mode():
            res, attn, _ = self._forward(frames)
            scores, idx = select_keypoints(attn, attn.shape[-1], -1.0)
            full = torch.empty_like(scores).scatter_(1, idx, scores)
        out: np.ndarray = full.reshape(-1, *res.grid).cpu().numpy().astype(np.float32)
        return out
