"""One shard of the rolling index: the frames of one camera within one time bucket."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import torch

from l2g_core.config import IndexConfig
from l2g_core.cosine import torch_view
from l2g_core.index import backend
from l2g_core.index.segment import Segment, segment_of
from l2g_core.types import FloatArray, FrameFeatures, FrameKey, FrameSource, l2_normalize

__all__ = ["RerankFeatures", "Shard", "ShardId", "dequantize_int8", "new_shard", "quantize_int8"]


def quantize_int8(descriptors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, D)`` float descriptors -> ``(n, D)`` int8 codes and ``(n,)`` float16 scales (each row's largest
    magnitude; ``row ~= codes * scale / 127``)."""
    x = np.asarray(descriptors, dtype=np.float32)
    scales = np.abs(x).max(axis=1) if x.shape[0] else np.zeros(0, np.float32)
    scales = scales.astype(np.float16).astype(np.float32)  # quantise with the scale that is stored
    safe = np.where(scales > 0, scales, 1.0)
    codes = np.clip(np.rint(x * (127.0 / safe)[:, None]), -127, 127).astype(np.int8)
    return codes, scales.astype(np.float16)


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Inverse of :func:`quantize_int8`: ``(n, D)`` float16, ``float16(float32(codes) * (float32(scale) / 127))``.

    Computed by torch: the same IEEE operations as numpy, bit for bit, but its float16 rounding is ~3x faster
    (128 rows: 43 against 60 us; a stage-1 shortlist dequantises ~150 frames)."""
    step = torch.from_numpy(np.asarray(scales, dtype=np.float32) / np.float32(127.0))
    out: np.ndarray = (torch_view(codes).float() * step[:, None]).half().numpy()
    return out


class RerankFeatures(Sequence[np.ndarray]):
    """Per frame, its strongest descriptors for stage 2 as ``(n_i, D)`` float16 (read-only view of how they are
    stored: float16, or int8 codes with a float16 scale per descriptor, see ``IndexConfig.rerank_dtype``)."""

    def __init__(self) -> None:
        self.codes: list[np.ndarray] = []  # per frame (n_i, D) int8 or float16
        self.scales: list[np.ndarray] = []  # per frame (n_i,) float16 (int8 codes only)

    def append(self, descriptors: np.ndarray, dtype: str) -> None:
        """Store one frame's ``(n, D)`` float descriptors as ``dtype`` (``int8`` or ``float16``)."""
        if dtype == "int8":
            codes, scales = quantize_int8(descriptors)
            self.codes.append(codes)
            self.scales.append(scales)
        else:
            self.codes.append(np.asarray(descriptors).astype(np.float16))

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, frame: int) -> np.ndarray:  # type: ignore[override]
        codes = self.codes[frame]
        return dequantize_int8(codes, self.scales[frame]) if codes.dtype == np.int8 else codes

    @property
    def nbytes(self) -> int:
        """Bytes stored."""
        return sum(c.nbytes for c in self.codes) + sum(s.nbytes for s in self.scales)


@dataclass(frozen=True, order=True)
class ShardId:
    """``(camera_id, bucket)``; bucket = floor(timestamp / bucket_seconds)."""

    camera_id: str
    bucket: int


class Shard:
    """Frames of one camera in one time bucket.

    While the index is flat, the shard's local descriptors live in its own exact ``index`` (ids are shard-local
    feature numbers; ``feature_frame[i]`` is the frame number of feature ``i``). Once the index is compressed,
    ``index`` is None and the descriptors live in the camera's :class:`~l2g_core.index.segment.Segment` (ids
    encode this shard's bucket and the frame number). Per frame the shard keeps its key, global descriptor and the
    strongest ``rerank_features`` descriptors (float16) with their keypoints, which stage 2 and the geometric
    baseline use.

    Not thread-safe: :class:`~l2g_core.index.rolling.RollingIndex` serialises access.
    """

    def __init__(self, shard_id: ShardId, config: IndexConfig, index: faiss.Index | None) -> None:
        self.id = shard_id
        self.config = config
        self.index = index
        self.keys: list[FrameKey] = []
        self.rerank_descriptors = RerankFeatures()  # per frame (n_i, D) float16 (stored as rerank_dtype)
        self.rerank_keypoints: list[FloatArray] = []  # per frame (n_i, 2) float32
        self.image_sizes: list[tuple[int, int]] = []
        self._globals: list[np.ndarray] = []  # per frame (G,) config.global_dtype
        self._feature_counts: list[int] = []  # per frame: local features indexed
        self._cache_globals: np.ndarray | None = None
        self._cache_feature_frame: np.ndarray | None = None
        self._cache_timestamps: np.ndarray | None = None
        self._cache_span: tuple[float, float] | None = None
        self.segment_id = segment_of(shard_id.camera_id, shard_id.bucket, config)
        """The segment that holds this shard's descriptors once compressed (see :func:`segment_of`)."""
        self.num_features = 0
        self.version = 0

    @property
    def kind(self) -> str:
        """``flat`` (own exact index) or ``ivfpq`` (descriptors in a segment)."""
        return "flat" if self.index is not None else "ivfpq"

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def globals(self) -> np.ndarray:
        """``(F, G)`` global descriptors of the shard's frames, ``config.global_dtype`` (float16: unit vectors)."""
        if self._cache_globals is None:
            self._cache_globals = (np.stack(self._globals) if self._globals
                                   else np.zeros((0, self.config.global_dim), self.config.global_dtype))
        return self._cache_globals

    def _stored_global(self, descriptor: np.ndarray) -> np.ndarray:
        """``(G,)`` as stored: float32 as given, or float16 of the unit vector (:mod:`l2g_core.cosine` bounds its
        float16 pass for rows of unit norm)."""
        if self.config.global_dtype == "float32":
            return np.asarray(descriptor, np.float32)
        return l2_normalize(np.asarray(descriptor, np.float32)).astype(np.float16)

    @property
    def feature_counts(self) -> np.ndarray:
        """``(F,)`` int64: local features indexed per frame."""
        return np.array(self._feature_counts, dtype=np.int64)

    @property
    def feature_frame(self) -> np.ndarray:
        """``(num_features,)`` int64: frame number of each indexed feature, in the order they were indexed."""
        if self._cache_feature_frame is None:
            self._cache_feature_frame = np.repeat(np.arange(len(self._feature_counts), dtype=np.int64),
                                                  self.feature_counts)
        return self._cache_feature_frame

    @property
    def timestamps(self) -> np.ndarray:
        """``(F,)`` float64 event times of the shard's frames."""
        if self._cache_timestamps is None:
            self._cache_timestamps = np.array([k.timestamp for k in self.keys], dtype=np.float64)
        return self._cache_timestamps

    @property
    def span(self) -> tuple[float, float] | None:
        """``(oldest, newest)`` event time of the shard's frames; None when it has none."""
        if self._cache_span is None and self.keys:
            ts = self.timestamps
            self._cache_span = (float(ts.min()), float(ts.max()))
        return self._cache_span

    @property
    def time_range(self) -> tuple[float, float]:
        """Span of the bucket, ``[start, end)`` seconds."""
        start = self.id.bucket * self.config.bucket_seconds
        return start, start + self.config.bucket_seconds

    def add(self, keys: Sequence[FrameKey], features: Sequence[FrameFeatures], segment: Segment | None = None
            ) -> None:
        """Append frames (already de-duplicated and trimmed to ``max_features_per_frame``).

        Args:
            keys, features: one per frame.
            segment: where a compressed shard's descriptors go (the segment of this shard's camera and bucket);
                ignored by a flat shard.
        """
        descs = [f.descriptors for f in features]
        frame0 = len(self.keys)
        counts = np.array([d.shape[0] for d in descs], dtype=np.int64)
        if counts.sum():
            stacked = np.ascontiguousarray(np.concatenate(descs), dtype=np.float32)
            if self.index is not None:
                self.index.add(stacked)
            else:
                assert segment is not None, "a compressed shard adds to its segment"
                segment.add(self.id.bucket, stacked,
                            np.repeat(np.arange(frame0, frame0 + len(keys), dtype=np.int64), counts))
        self._feature_counts.extend(counts.tolist())
        for key, feat in zip(keys, features, strict=True):
            strongest = feat.top(self.config.rerank_features)
            self.keys.append(key)
            self._globals.append(self._stored_global(feat.global_descriptor))
            self.rerank_descriptors.append(strongest.descriptors, self.config.rerank_dtype)
            self.rerank_keypoints.append(strongest.keypoints)
            self.image_sizes.append(feat.image_size)
        self.num_features += int(counts.sum())
        self._cache_globals = self._cache_feature_frame = self._cache_timestamps = self._cache_span = None
        self.version += 1

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, np.ndarray]:
        """Nearest indexed features of each query descriptor (a flat shard; a compressed one is searched through
        its segment).

        Args:
            queries: ``(Q, D)`` float32 unit vectors.
            k: neighbours per query (clipped to the shard size).

        Returns:
            ``(sims, frames)``: ``(Q, k')`` float32 inner products (descending per row) and ``(Q, k')`` int64
            frame numbers, ``-1`` where fewer than ``k'`` neighbours exist.

        Raises:
            TypeError: the shard is compressed.
        """
        if self.index is None:
            raise TypeError(f"shard {self.id} is compressed: search its segment")
        kk = min(k, self.num_features)
        if kk == 0:
            return np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
        sims, ids = self.index.search(queries, kk)
        frames = np.where(ids >= 0, self.feature_frame[np.maximum(ids, 0)], -1)
        return sims, frames

    def raw_descriptors(self) -> FloatArray | None:
        """``(num_features, D)`` float32 copy of a flat index's vectors; ``None`` for a compressed shard."""
        if self.index is None:
            return None
        cpu = self.index if isinstance(self.index, faiss.IndexFlat) else faiss.index_gpu_to_cpu(self.index)
        flat: Any = cpu
        raw: FloatArray = faiss.rev_swig_ptr(flat.get_xb(), self.num_features * self.config.local_dim)
        return raw.reshape(self.num_features, self.config.local_dim).copy()

    def compress(self, segment: Segment) -> None:
        """Move a flat shard's vectors into ``segment`` (its camera's, trained) and drop its own index."""
        raw = self.raw_descriptors()
        if raw is None:
            return
        segment.add(self.id.bucket, raw, self.feature_frame)
        self.index = None
        self._cache_feature_frame = None
        self.version += 1

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The shard's content as named arrays (what a snapshot stores); inverse of :meth:`from_arrays`.

        Keys: ``timestamps``, ``sequences``, ``globals``, ``feature_counts`` (features per frame),
        ``rerank_counts``, ``rerank_codes`` (int8 or float16, ``(sum n_i, D)``), ``rerank_scales`` (float16, one per
        int8 code row, else empty), ``rerank_keypoints``, ``image_sizes``, and for a flat
        shard ``descriptors`` (its raw vectors; a compressed shard's codes are stored with its segment).
        """
        arrays = {
            "timestamps": self.timestamps,
            "sequences": np.array([k.sequence for k in self.keys], dtype=np.int64),
            "globals": self.globals,
            "feature_counts": self.feature_counts,
            "rerank_counts": np.array([c.shape[0] for c in self.rerank_descriptors.codes], dtype=np.int64),
            "rerank_codes": np.concatenate(self.rerank_descriptors.codes) if len(self.rerank_descriptors)
            else np.zeros((0, self.config.local_dim), np.int8 if self.config.rerank_dtype == "int8" else np.float16),
            "rerank_scales": np.concatenate(self.rerank_descriptors.scales) if self.rerank_descriptors.scales
            else np.zeros(0, np.float16),
            "rerank_keypoints": np.concatenate(self.rerank_keypoints)
            if self.rerank_keypoints else np.zeros((0, 2), np.float32),
            "image_sizes": np.array(self.image_sizes, dtype=np.int64).reshape(-1, 2),
            "sources": _source_array(self.keys),
        }
        raw = self.raw_descriptors()
        if raw is not None:
            arrays["descriptors"] = raw
        return arrays

    @classmethod
    def from_arrays(cls, shard_id: ShardId, config: IndexConfig, arrays: Mapping[str, np.ndarray], *,
                    segment: Segment | None = None, version: int = 0) -> Shard:
        """Rebuild a shard from :meth:`to_arrays` output.

        Args:
            shard_id, config: the shard's id and its index's configuration.
            arrays: the named arrays; without ``descriptors`` the shard is compressed (its codes are already in
                its segment).
            segment: for a flat shard of a compressed index, the segment its descriptors are moved into.
            version: the version the rebuilt shard carries (a snapshot keeps the saved one, so the next change
                gets a new version).

        Raises:
            KeyError: an array is missing; ValueError: the arrays are inconsistent.
        """
        counts = np.asarray(arrays["feature_counts"], dtype=np.int64)
        if "descriptors" in arrays:
            shard = new_shard(shard_id, config)
            if arrays["descriptors"].shape[0] != int(counts.sum()):
                raise ValueError(f"shard {shard_id}: {arrays['descriptors'].shape[0]} descriptors, "
                                 f"feature counts sum to {int(counts.sum())}")
            if arrays["descriptors"].shape[0]:
                assert shard.index is not None
                shard.index.add(np.ascontiguousarray(arrays["descriptors"], dtype=np.float32))
        else:
            shard = cls(shard_id, config, None)
        shard.num_features = int(counts.sum())
        shard._feature_counts = counts.tolist()
        if segment is not None:
            shard.compress(segment)
        sources = _sources(arrays.get("sources"), len(arrays["timestamps"]))  # absent in older snapshots
        shard.keys = [
            FrameKey(shard_id.camera_id, float(ts), int(seq), src)
            for ts, seq, src in zip(arrays["timestamps"], arrays["sequences"], sources, strict=True)
        ]
        saved = arrays["globals"]
        shard._globals = (list(saved) if saved.dtype == np.dtype(config.global_dtype)  # as stored: bit for bit
                          else [shard._stored_global(g) for g in saved])
        bounds = np.cumsum(arrays["rerank_counts"])[:-1]
        codes = arrays["rerank_codes"]
        if codes.dtype == np.int8:
            shard.rerank_descriptors.codes = list(np.split(codes, bounds))
            shard.rerank_descriptors.scales = list(np.split(arrays["rerank_scales"].astype(np.float16), bounds))
        else:
            for frame_codes in np.split(codes, bounds):
                shard.rerank_descriptors.append(frame_codes, config.rerank_dtype)
        shard.rerank_keypoints = list(np.split(arrays["rerank_keypoints"].astype(np.float32), bounds))
        shard.image_sizes = [(int(h), int(w)) for h, w in arrays["image_sizes"]]
        if not len(counts) == len(shard.keys) == len(shard._globals) == len(shard.image_sizes):
            raise ValueError(f"shard {shard_id}: per-frame arrays of different lengths")
        shard._cache_globals = shard._cache_feature_frame = shard._cache_timestamps = shard._cache_span = None
        shard.version = version
        return shard

    def nbytes(self) -> int:
        """Approximate resident bytes of the shard (a flat index's vectors and frame map, per-frame arrays; a
        compressed shard's codes are counted by its segment)."""
        index_bytes = self.num_features * (self.config.local_dim * 4 + 8) if self.index is not None else 0
        per_frame = self.rerank_descriptors.nbytes + sum(k.nbytes for k in self.rerank_keypoints)
        global_bytes = self.config.global_dim * np.dtype(self.config.global_dtype).itemsize
        return index_bytes + per_frame + len(self.keys) * (global_bytes + 64)


def _source_array(keys: Sequence[FrameKey]) -> np.ndarray:
    """``(F, 5)`` int64 ``(partition, offset, index, width, height)`` of each key's source, ``-1`` rows where
    unknown (the ``sources`` array of a snapshot)."""
    out = np.full((len(keys), 5), -1, dtype=np.int64)
    for i, key in enumerate(keys):
        src = key.source
        if src is not None:
            out[i] = (src.partition, src.offset, src.index, src.width, src.height)
    return out


def _sources(array: np.ndarray | None, n: int) -> list[FrameSource | None]:
    """Inverse of :func:`_source_array` (``None``: a snapshot written before sources were kept)."""
    if array is None:
        return [None] * n
    rows = np.asarray(array, dtype=np.int64).reshape(n, 5)
    return [None if row[0] < 0 else FrameSource(*(int(v) for v in row)) for row in rows]


def new_shard(shard_id: ShardId, config: IndexConfig) -> Shard:
    """An empty flat shard (a compressed index's shards are built with ``Shard(shard_id, config, None)``)."""
    return Shard(shard_id, config, backend.to_device(backend.new_flat(config.local_dim), config))
