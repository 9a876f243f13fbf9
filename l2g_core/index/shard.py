"""One shard of the rolling index: the frames of one camera within one time bucket."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import faiss
import numpy as np

from l2g_core.config import IndexConfig
from l2g_core.index import backend
from l2g_core.types import FloatArray, FrameFeatures, FrameKey

__all__ = ["CoarseAssignment", "Shard", "ShardId", "new_shard"]


@dataclass(frozen=True, order=True)
class ShardId:
    """``(camera_id, bucket)``; bucket = floor(timestamp / bucket_seconds)."""

    camera_id: str
    bucket: int


class CoarseAssignment(NamedTuple):
    """The inverted lists a batch of query descriptors probes in a compressed shard.

    Attributes:
        lists: ``(Q, nprobe)`` int64 list numbers (``-1`` where fewer lists exist).
        sims: ``(Q, nprobe)`` float32 inner products of the queries with those lists' centroids.
    """

    lists: np.ndarray
    sims: FloatArray


class Shard:
    """Frames of one camera in one time bucket, with their own FAISS index.

    Local descriptors of all frames live in ``index`` (ids are shard-local feature numbers);
    ``feature_frame[i]`` is the frame number of feature ``i``. Per frame the shard also keeps its key,
    global descriptor and the strongest ``rerank_features`` descriptors (float16) with their keypoints,
    which stage 2 and the geometric baseline use.

    Not thread-safe: :class:`~l2g_core.index.rolling.RollingIndex` serialises access.
    """

    def __init__(self, shard_id: ShardId, config: IndexConfig, index: faiss.Index) -> None:
        self.id = shard_id
        self.config = config
        self.index = index
        self.keys: list[FrameKey] = []
        self.rerank_descriptors: list[np.ndarray] = []  # per frame (n_i, D) float16
        self.rerank_keypoints: list[FloatArray] = []  # per frame (n_i, 2) float32
        self.image_sizes: list[tuple[int, int]] = []
        self._globals: list[FloatArray] = []
        self._feature_frame: list[np.ndarray] = []
        self._cache_globals: FloatArray | None = None
        self._cache_feature_frame: np.ndarray | None = None
        self._cache_timestamps: np.ndarray | None = None
        self.num_features = 0
        self.version = 0
        self._coarse_of: faiss.Index | None = None  # the index ``_coarse_key`` was computed for
        self._coarse_key: str | None = None

    @property
    def kind(self) -> str:
        """``flat`` or ``ivfpq``."""
        return "ivfpq" if isinstance(self.index, faiss.IndexIVF) else "flat"

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def globals(self) -> FloatArray:
        """``(F, G)`` float32 global descriptors of the shard's frames."""
        if self._cache_globals is None:
            self._cache_globals = (
                np.stack(self._globals) if self._globals else np.zeros((0, self.config.global_dim), np.float32)
            )
        return self._cache_globals

    @property
    def feature_frame(self) -> np.ndarray:
        """``(num_features,)`` int64: frame number of each indexed feature."""
        if self._cache_feature_frame is None:
            self._cache_feature_frame = (
                np.concatenate(self._feature_frame) if self._feature_frame else np.zeros(0, np.int64)
            )
        return self._cache_feature_frame

    @property
    def timestamps(self) -> np.ndarray:
        """``(F,)`` float64 event times of the shard's frames."""
        if self._cache_timestamps is None:
            self._cache_timestamps = np.array([k.timestamp for k in self.keys], dtype=np.float64)
        return self._cache_timestamps

    @property
    def time_range(self) -> tuple[float, float]:
        """Span of the bucket, ``[start, end)`` seconds."""
        start = self.id.bucket * self.config.bucket_seconds
        return start, start + self.config.bucket_seconds

    def add(self, keys: Sequence[FrameKey], features: Sequence[FrameFeatures]) -> None:
        """Append frames (already de-duplicated and trimmed to ``max_features_per_frame``)."""
        descs = [f.descriptors for f in features]
        frame0 = len(self.keys)
        counts = np.array([d.shape[0] for d in descs], dtype=np.int64)
        if counts.sum():
            self.index.add(np.ascontiguousarray(np.concatenate(descs), dtype=np.float32))
        self._feature_frame.append(np.repeat(np.arange(frame0, frame0 + len(keys), dtype=np.int64), counts))
        for key, feat in zip(keys, features, strict=True):
            strongest = feat.top(self.config.rerank_features)
            self.keys.append(key)
            self._globals.append(feat.global_descriptor)
            self.rerank_descriptors.append(strongest.descriptors.astype(np.float16))
            self.rerank_keypoints.append(strongest.keypoints)
            self.image_sizes.append(feat.image_size)
        self.num_features += int(counts.sum())
        self._cache_globals = self._cache_feature_frame = self._cache_timestamps = None
        self.version += 1

    def search(self, queries: FloatArray, k: int) -> tuple[FloatArray, np.ndarray]:
        """Nearest indexed features of each query descriptor.

        Args:
            queries: ``(Q, D)`` float32 unit vectors.
            k: neighbours per query (clipped to the shard size).

        Returns:
            ``(sims, frames)``: ``(Q, k')`` float32 inner products (descending per row) and ``(Q, k')`` int64
            frame numbers, ``-1`` where fewer than ``k'`` neighbours exist.
        """
        kk = min(k, self.num_features)
        if kk == 0:
            return np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
        sims, ids = self.index.search(queries, kk)
        frames = np.where(ids >= 0, self.feature_frame[np.maximum(ids, 0)], -1)
        return sims, frames

    @property
    def coarse_key(self) -> str | None:
        """Identity of the coarse quantizer (its centroids) and ``nprobe`` of a compressed CPU shard, else ``None``.

        Shards with the same key probe the same lists for the same query, so one :meth:`assign` serves them all
        (every shard compressed into one template has the template's key).
        """
        if self._coarse_of is not self.index:
            self._coarse_of, self._coarse_key = self.index, None
            if isinstance(self.index, faiss.IndexIVF):
                ivf: Any = self.index
                quantizer: Any = faiss.downcast_index(ivf.quantizer)
                if isinstance(quantizer, faiss.IndexFlat):
                    centroids = faiss.rev_swig_ptr(quantizer.get_xb(), quantizer.ntotal * quantizer.d)
                    digest = hashlib.blake2b(np.ascontiguousarray(centroids).tobytes(), digest_size=16)
                    digest.update(f"{type(quantizer).__name__}/{quantizer.metric_type}".encode())
                    self._coarse_key = digest.hexdigest()
        if self._coarse_key is None:
            return None
        ivf_now: Any = self.index
        nprobe: int = ivf_now.nprobe  # read live: it may be tuned after compression
        return f"{self._coarse_key}/{nprobe}"

    def assign(self, queries: FloatArray) -> CoarseAssignment:
        """The lists of this shard's coarse quantizer that ``queries`` ``(Q, D)`` float32 probe (``nprobe`` each).

        Raises:
            TypeError: the shard is not compressed.
        """
        if self.coarse_key is None:
            raise TypeError("only a compressed shard has a coarse quantizer")
        ivf: Any = self.index
        sims, lists = ivf.quantizer.search(queries, ivf.nprobe)
        return CoarseAssignment(lists, sims)

    def search_preassigned(self, queries: FloatArray, k: int, assignment: CoarseAssignment
                           ) -> tuple[FloatArray, np.ndarray]:
        """:meth:`search` of a compressed shard with the queries' lists already assigned (identical results).

        Args:
            queries: ``(Q, D)`` float32 unit vectors.
            k: neighbours per query (clipped to the shard size).
            assignment: :meth:`assign` of ``queries`` by this shard or one with the same :attr:`coarse_key`.

        Returns:
            As :meth:`search`.
        """
        kk = min(k, self.num_features)
        if kk == 0:
            return np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
        ivf: Any = self.index
        sims, ids = ivf.search_preassigned(queries, kk, assignment.lists, assignment.sims)
        frames = np.where(ids >= 0, self.feature_frame[np.maximum(ids, 0)], -1)
        return sims, frames

    def raw_descriptors(self) -> FloatArray | None:
        """``(num_features, D)`` float32 copy of a flat index's vectors; ``None`` for a compressed index."""
        if self.kind != "flat":
            return None
        cpu = self.index if isinstance(self.index, faiss.IndexFlat) else faiss.index_gpu_to_cpu(self.index)
        flat: Any = cpu
        raw: FloatArray = faiss.rev_swig_ptr(flat.get_xb(), self.num_features * self.config.local_dim)
        return raw.reshape(self.num_features, self.config.local_dim).copy()

    def compress(self, template: faiss.Index) -> None:
        """Move a flat shard's vectors into a clone of the trained IVF-PQ ``template``."""
        raw = self.raw_descriptors()
        if raw is None:
            return
        index = faiss.clone_index(template)
        if raw.shape[0]:
            index.add(raw)
        self.index = index
        self.version += 1

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The shard's content as named arrays (what a snapshot stores); inverse of :meth:`from_arrays`.

        Keys: ``timestamps``, ``sequences``, ``globals``, ``feature_counts`` (features per frame),
        ``rerank_counts``, ``rerank_descriptors``, ``rerank_keypoints``, ``image_sizes``, and either
        ``descriptors`` (a flat index's raw vectors) or ``index_blob`` (a compressed index, serialised).
        """
        counts = np.bincount(self.feature_frame, minlength=len(self)).astype(np.int64)
        arrays = {
            "timestamps": self.timestamps,
            "sequences": np.array([k.sequence for k in self.keys], dtype=np.int64),
            "globals": self.globals,
            "feature_counts": counts,
            "rerank_counts": np.array([d.shape[0] for d in self.rerank_descriptors], dtype=np.int64),
            "rerank_descriptors": np.concatenate(self.rerank_descriptors)
            if self.rerank_descriptors else np.zeros((0, self.config.local_dim), np.float16),
            "rerank_keypoints": np.concatenate(self.rerank_keypoints)
            if self.rerank_keypoints else np.zeros((0, 2), np.float32),
            "image_sizes": np.array(self.image_sizes, dtype=np.int64).reshape(-1, 2),
        }
        raw = self.raw_descriptors()
        if raw is not None:
            arrays["descriptors"] = raw
        else:
            arrays["index_blob"] = backend.serialize(self.index)
        return arrays

    @classmethod
    def from_arrays(cls, shard_id: ShardId, config: IndexConfig, arrays: Mapping[str, np.ndarray], *,
                    template: faiss.Index | None = None, version: int = 0) -> Shard:
        """Rebuild a shard from :meth:`to_arrays` output.

        Args:
            shard_id, config: the shard's id and its index's configuration.
            arrays: the named arrays.
            template: the index's trained IVF-PQ codec, if any; raw descriptors are compressed into it.
            version: the version the rebuilt shard carries (a snapshot keeps the saved one, so the next change
                gets a new version).

        Raises:
            KeyError: an array is missing; ValueError: the arrays are inconsistent.
        """
        shard = new_shard(shard_id, config, None)
        if "index_blob" in arrays:
            shard.index = backend.deserialize(arrays["index_blob"])
            shard.num_features = int(shard.index.ntotal)
        elif arrays["descriptors"].shape[0]:
            shard.index.add(np.ascontiguousarray(arrays["descriptors"], dtype=np.float32))
            shard.num_features = int(arrays["descriptors"].shape[0])
        if template is not None and "descriptors" in arrays:
            shard.compress(template)
        counts = arrays["feature_counts"]
        shard._feature_frame = [np.repeat(np.arange(len(counts), dtype=np.int64), counts)]
        shard.keys = [
            FrameKey(shard_id.camera_id, float(ts), int(seq))
            for ts, seq in zip(arrays["timestamps"], arrays["sequences"], strict=True)
        ]
        shard._globals = list(arrays["globals"].astype(np.float32))
        bounds = np.cumsum(arrays["rerank_counts"])[:-1]
        shard.rerank_descriptors = list(np.split(arrays["rerank_descriptors"], bounds))
        shard.rerank_keypoints = list(np.split(arrays["rerank_keypoints"].astype(np.float32), bounds))
        shard.image_sizes = [(int(h), int(w)) for h, w in arrays["image_sizes"]]
        shard._cache_globals = shard._cache_feature_frame = shard._cache_timestamps = None
        shard.version = version
        return shard

    def nbytes(self) -> int:
        """Approximate resident bytes (index codes, id maps, per-frame arrays)."""
        if self.kind == "flat":
            index_bytes = self.num_features * self.config.local_dim * 4
        else:
            index_bytes = self._code_bytes() + self.num_features * 8  # codes, and an int64 id per feature
        per_frame = sum(d.nbytes for d in self.rerank_descriptors) + sum(k.nbytes for k in self.rerank_keypoints)
        return index_bytes + self.num_features * 8 + per_frame + len(self.keys) * (self.config.global_dim * 4 + 64)


    def _code_bytes(self) -> int:
        """Bytes of a compressed index's codes; fast-scan pads each list to whole blocks of ``bbs`` codes, about
        half a block per non-empty list (estimated, so that :meth:`nbytes` stays cheap)."""
        ivf: Any = self.index
        if isinstance(ivf, faiss.IndexIVFFastScan):
            padded = self.num_features + min(int(ivf.nlist), self.num_features) * (int(ivf.bbs) - 1) / 2
            return int(padded * int(ivf.M2) // 2)
        return self.num_features * int(ivf.code_size)


def new_shard(shard_id: ShardId, config: IndexConfig, template: faiss.Index | None) -> Shard:
    """An empty shard: flat, or a clone of the trained IVF-PQ template."""
    if template is not None:
        index = faiss.clone_index(template)  # already the concrete type; owns its memory
    else:
        index = backend.to_device(backend.new_flat(config.local_dim), config)
    return Shard(shard_id, config, index)
