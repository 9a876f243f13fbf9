"""The extractor interface: a batch of RGB frames in, one :class:`~l2g_core.FrameFeatures` per frame out."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from l2g_core import FrameFeatures
from plugins.errors import ExtractorInputError, PluginError

__all__ = ["MAX_SIDE", "MIN_SIDE", "Extractor", "RGBBatch", "resolve_device", "validate_batch"]

RGBBatch = npt.NDArray[np.uint8]
MIN_SIDE = 32
MAX_SIDE = 8192


def resolve_device(device: str | None) -> str:
    """``"cuda"`` when ``device`` is ``None``/``"auto"`` and a GPU is visible, else ``"cpu"``; explicit values pass."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise PluginError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return str(device)


def validate_batch(frames: Any, *, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE) -> RGBBatch:
    """Check that ``frames`` is a non-empty ``(B, H, W, 3)`` uint8 RGB batch and return it as a numpy array.

    Raises:
        ExtractorInputError: wrong type, dtype, rank or channel count (grayscale, RGBA), empty batch, or a
            side outside ``[min_side, max_side]`` pixels.
    """
    if not isinstance(frames, np.ndarray):
        raise ExtractorInputError(f"frames must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ExtractorInputError(f"frames must be uint8 RGB, got dtype {frames.dtype}")
    if frames.ndim == 3:
        raise ExtractorInputError(
            f"frames must be a (B, H, W, 3) batch, got shape {frames.shape}; wrap a single frame as frames[None]"
        )
    if frames.ndim != 4:
        raise ExtractorInputError(f"frames must be a (B, H, W, 3) batch, got shape {frames.shape}")
    if frames.shape[0] == 0:
        raise ExtractorInputError("empty batch: at least one frame is needed")
    if frames.shape[3] != 3:
        kind = "grayscale" if frames.shape[3] == 1 else f"{frames.shape[3]}-channel"
        raise ExtractorInputError(f"frames must be RGB with 3 channels, got {kind} input of shape {frames.shape}")
    h, w = frames.shape[1:3]
    if min(h, w) < min_side:
        raise ExtractorInputError(f"frames of {w}x{h} are too small: each side must be at least {min_side} pixels")
    if max(h, w) > max_side:
        raise ExtractorInputError(f"frames of {w}x{h} are too large: each side must be at most {max_side} pixels")
    return np.ascontiguousarray(frames)


class Extractor(abc.ABC):
    """Base class of every feature extractor.

    Lifecycle: construct (cheap, validates options) -> :meth:`setup` (loads weights, moves to the device; called
    automatically by the first :meth:`extract`) -> :meth:`extract` any number of times -> :meth:`close`. Also a
    context manager.

    Class attributes:
        name: registry name.
        local_dim: length ``D`` of each local descriptor.
        global_dim: length ``G`` of the global descriptor.
    """

    name: ClassVar[str] = ""
    local_dim: int = 0
    global_dim: int = 0

    def __init__(self, device: str | None = "auto") -> None:
        self._device_request = device
        self.device = "cpu"
        self._ready = False

    def setup(self) -> None:
        """Resolve the device and load weights (idempotent)."""
        if self._ready:
            return
        self.device = resolve_device(self._device_request)
        self._setup()
        self._ready = True

    def extract(self, frames: RGBBatch) -> list[FrameFeatures]:
        """Features of a ``(B, H, W, 3)`` uint8 RGB batch, one :class:`FrameFeatures` per frame, in order.

        Raises:
            ExtractorInputError: the batch is malformed (see :func:`validate_batch`).
        """
        batch = validate_batch(frames)
        self.setup()
        out = self._extract(batch)
        assert len(out) == batch.shape[0], "an extractor must return one FrameFeatures per frame"
        return out

    def close(self) -> None:
        """Release weights and device memory (idempotent)."""
        if self._ready:
            self._close()
        self._ready = False

    def options(self) -> dict[str, Any]:
        """Settings that change the features (they are part of the index tag: change them and the index is new)."""
        return {}

    def __enter__(self) -> Extractor:
        self.setup()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def _setup(self) -> None:
        """Load weights onto ``self.device``."""

    @abc.abstractmethod
    def _extract(self, frames: RGBBatch) -> list[FrameFeatures]:
        """Features of a validated batch."""

    def _close(self) -> None:  # noqa: B027 - optional hook, a no-op unless overridden
        """Release resources; default: nothing."""
