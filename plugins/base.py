"""The extractor interface: a batch of RGB frames in, one :class:`~l2g_core.FrameFeatures` per frame out."""

from __future__ import annotations

import abc
import copy
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from l2g_core import FrameFeatures
from plugins.errors import ExtractorInputError, PluginError
from plugins.options import ExtractorOptions, validate_options

__all__ = ["MAX_SIDE", "MIN_SIDE", "Extractor", "RGBBatch", "check_device", "resolve_device", "validate_batch"]

RGBBatch = npt.NDArray[np.uint8]
MIN_SIDE = 32
MAX_SIDE = 8192


def check_device(device: str | None) -> str | None:
    """``device`` when it is ``None``, ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (checked without torch).

    Raises:
        PluginError: anything else.
    """
    if device in (None, "auto", "cpu", "cuda"):
        return device
    if not (isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit()):
        raise PluginError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


def resolve_device(device: str | None) -> str:
    """``"cuda"`` when ``device`` is ``None``/``"auto"`` and a GPU is visible, else ``"cpu"``; explicit values pass."""
    if check_device(device) in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
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

    Options: each extractor declares ``Options``, a frozen :class:`~plugins.options.ExtractorOptions` model; the
    constructor takes an instance of it or a mapping validated by it (unknown keys and bad values raise
    :class:`PluginError`), kept as :attr:`opts`. The device is a separate argument: it is not an option of the
    features (see :meth:`snapshot_identity`).

    Class attributes:
        name: registry name.
        Options: the options model.
        local_dim: length ``D`` of each local descriptor.
        global_dim: length ``G`` of the global descriptor.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[ExtractorOptions]] = ExtractorOptions
    local_dim: int = 0
    global_dim: int = 0
    opts: ExtractorOptions

    def __init__(self, options: ExtractorOptions | Mapping[str, Any] | None = None, *,
                 device: str | None = "auto") -> None:
        self.opts = self.parse_options(options)
        self._device_request = check_device(device)
        self.device = "cpu"
        self._ready = False
        self._identity: dict[str, Any] | None = None

    @classmethod
    def parse_options(cls, options: ExtractorOptions | Mapping[str, Any] | None = None) -> ExtractorOptions:
        """``options`` as an instance of :attr:`Options` (a mapping is validated; ``None`` means the defaults).

        Raises:
            PluginError: unknown keys, bad values, or an options model of another extractor.
        """
        if isinstance(options, cls.Options):
            return options
        if isinstance(options, ExtractorOptions):
            raise PluginError(f"extractor {cls.name!r} takes {cls.Options.__name__}, not {type(options).__name__}")
        return validate_options(cls.Options, options or {}, what=f"extractor {cls.name or cls.__name__!r}")

    @classmethod
    def create(cls, options: Mapping[str, Any]) -> Self:
        """An extractor from a flat mapping of options, ``device`` included (what ``get_extractor`` and the
        settings' ``extractor.options`` pass); without ``device``, the class's default device.

        Raises:
            PluginError: unknown keys or bad values.
        """
        rest = dict(options)
        if "device" not in rest:
            return cls(rest)
        device = rest.pop("device")
        return cls(rest, device=device)

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
        """Every option, JSON-able (``get_extractor(name, **options())`` rebuilds the same options); not the
        device."""
        return self.opts.model_dump(mode="json")

    def snapshot_identity(self) -> dict[str, Any]:
        """What makes this extractor's features what they are, JSON-able: ``{"extractor": name, "options": ...}``
        with the feature options, and the sha256 of each weights file in place of its path (see
        :meth:`ExtractorOptions.identity <plugins.options.ExtractorOptions.identity>`). Snapshots are tagged with
        it: features of another identity are never mixed into an index. The device and ``fp16`` are not in it (a
        snapshot built on the CPU is valid on a GPU).

        Take it after :meth:`setup` (the files are hashed then, once: the result is cached).

        Raises:
            WeightsError: a configured weights file does not exist.
        """
        if self._identity is None:
            self._identity = {"extractor": self.name, "options": self.opts.identity()}
        return copy.deepcopy(self._identity)

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
