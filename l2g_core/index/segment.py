"""One search unit of a compressed rolling index: the IVF-PQ codes of one camera over many time buckets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import faiss
import numpy as np

from l2g_core.config import IndexConfig
from l2g_core.index import backend
from l2g_core.types import FloatArray

__all__ = ["BUCKET_SHIFT", "CoarseAssignment", "Segment", "SegmentId", "new_segment", "segment_of"]

BUCKET_SHIFT = 32
"""A feature's id in a segment is ``(bucket - segment.first_bucket) << BUCKET_SHIFT | frame``: the bucket's offset
within the segment and the frame's number within its bucket's shard, so one id range holds one bucket."""


@dataclass(frozen=True, order=True)
class SegmentId:
    """``(camera_id, number)``; number = floor(bucket / buckets_per_segment)."""

    camera_id: str
    number: int


def segment_of(camera_id: str, bucket: int, config: IndexConfig) -> SegmentId:
    """The segment that holds the codes of ``camera_id``'s time bucket ``bucket``."""
    return SegmentId(camera_id, bucket // config.buckets_per_segment)


class CoarseAssignment(NamedTuple):
    """The inverted lists a batch of query descriptors probes in a segment.

    Attributes:
        lists: ``(Q, nprobe)`` int64 list numbers (``-1`` where fewer lists exist).
        sims: ``(Q, nprobe)`` float32 inner products of the queries with those lists' centroids.
    """

    lists: np.ndarray
    sims: FloatArray


class Segment:
    """The local descriptors of one camera's frames over ``config.buckets_per_segment`` consecutive time buckets,
    in one IVF-PQ index (a clone of the rolling index's trained template).

    Stage 1 searches one segment instead of one small index per bucket: the cost of an IVF fast-scan search is
    mostly fixed per (query descriptor, index), so fewer, larger indexes are faster. The frames' keys, globals and
    re-rank features stay in their per-bucket :class:`~l2g_core.index.shard.Shard`; a feature's id encodes its
    bucket and frame (:data:`BUCKET_SHIFT`), so a bucket is selected by an id range (time filters) and removed by
    one (retention).

    Not thread-safe: :class:`~l2g_core.index.rolling.RollingIndex` serialises access.

    Args:
        segment_id: camera and segment number.
        config: the index configuration.
        index: an IVF index (empty clone of the template, or deserialised).
        version: changes with every add or removal (snapshots rewrite a segment file when it changes).
    """

    def __init__(self, segment_id: SegmentId, config: IndexConfig, index: faiss.Index, version: int = 0) -> None:
        self.id = segment_id
        self.config = config
        self.index = index
        self.version = version
        self.buckets: set[int] = set()  # buckets whose shard exists (kept by the rolling index)
        self._coarse_of: faiss.Index | None = None
        self._coarse_key: str | None = None

    @property
    def first_bucket(self) -> int:
        """The first time bucket of the segment."""
        return self.id.number * self.config.buckets_per_segment

    @property
    def num_features(self) -> int:
        """Features indexed."""
        return int(self.index.ntotal)

    def _range(self, first: int, last: int) -> tuple[int, int]:
        """Id range ``[lo, hi)`` of buckets ``first..last`` (inclusive)."""
        lo, hi = first - self.first_bucket, last - self.first_bucket + 1
        assert 0 <= lo < hi <= self.config.buckets_per_segment, (first, last, self.id)
        return lo << BUCKET_SHIFT, hi << BUCKET_SHIFT

    def add(self, bucket: int, descriptors: FloatArray, frames: np.ndarray) -> None:
        """Index features of ``bucket``'s shard.

        Args:
            bucket: the shard's time bucket (within this segment).
            descriptors: ``(n, D)`` float32 unit vectors.
            frames: ``(n,)`` int64 frame number (within the shard) of each feature.
        """
        if not descriptors.shape[0]:
            return
        lo, _ = self._range(bucket, bucket)
        ids = np.ascontiguousarray(frames, dtype=np.int64) + lo
        self.index.add_with_ids(np.ascontiguousarray(descriptors, dtype=np.float32), ids)
        self.version += 1

    def remove_bucket(self, bucket: int) -> int:
        """Drop every feature of ``bucket``; returns how many."""
        lo, hi = self._range(bucket, bucket)
        removed = int(self.index.remove_ids(faiss.IDSelectorRange(lo, hi)))
        if removed:
            self.version += 1
        return removed

    @property
    def coarse_key(self) -> str:
        """Identity of the coarse quantizer (its centroids) and ``nprobe``: segments with the same key probe the
        same lists for the same query, so one :meth:`assign` serves them all (every segment of one template)."""
        if self._coarse_of is not self.index:
            ivf: Any = self.index
            quantizer: Any = faiss.downcast_index(ivf.quantizer)
            digest = hashlib.blake2b(digest_size=16)
            if isinstance(quantizer, faiss.IndexFlat):
                digest.update(np.ascontiguousarray(
                    faiss.rev_swig_ptr(quantizer.get_xb(), quantizer.ntotal * quantizer.d)).tobytes())
            else:  # no centroids to hash: a key of its own
                digest.update(str(id(quantizer)).encode())
            digest.update(f"{type(quantizer).__name__}/{quantizer.metric_type}".encode())
            self._coarse_of, self._coarse_key = self.index, digest.hexdigest()
        ivf_now: Any = self.index
        return f"{self._coarse_key}/{int(ivf_now.nprobe)}"  # nprobe read live: it may be tuned

    def assign(self, queries: FloatArray) -> CoarseAssignment:
        """The lists that ``queries`` ``(Q, D)`` float32 probe (``nprobe`` each)."""
        ivf: Any = self.index
        sims, lists = ivf.quantizer.search(queries, ivf.nprobe)
        return CoarseAssignment(lists, sims)

    def search(self, queries: FloatArray, k: int, assignment: CoarseAssignment | None = None,
               buckets: tuple[int, int] | None = None) -> tuple[FloatArray, np.ndarray]:
        """Nearest indexed features of each query descriptor.

        Args:
            queries: ``(Q, D)`` float32 unit vectors.
            k: neighbours per query (clipped to the segment size).
            assignment: :meth:`assign` of ``queries`` by a segment with the same :attr:`coarse_key` (computed when
                None).
            buckets: only features of buckets ``first..last`` (inclusive); None: every bucket.

        Returns:
            ``(sims, ids)``: ``(Q, k')`` float32 inner products (descending per row) and ``(Q, k')`` int64 feature
            ids (see :data:`BUCKET_SHIFT`), ``-1`` where fewer than ``k'`` neighbours exist.
        """
        kk = min(k, self.num_features)
        if kk == 0:
            return np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
        if assignment is None:
            assignment = self.assign(queries)
        ivf: Any = self.index
        if buckets is None:
            sims, ids = ivf.search_preassigned(queries, kk, assignment.lists, assignment.sims)
            return sims, ids
        # a bucket range: FAISS's Python wrapper of search_preassigned takes no search parameters, so the C++
        # method is called with an id-range selector
        lo, hi = self._range(*buckets)
        selector = faiss.IDSelectorRange(lo, hi)  # (held here: params does not own it)
        params = faiss.SearchParametersIVF()
        params.sel, params.nprobe = selector, int(ivf.nprobe)
        x = np.ascontiguousarray(queries, dtype=np.float32)
        lists = np.ascontiguousarray(assignment.lists, dtype=np.int64)
        coarse = np.ascontiguousarray(assignment.sims, dtype=np.float32)
        assert lists.shape == coarse.shape == (x.shape[0], int(ivf.nprobe)), (lists.shape, coarse.shape)
        sims = np.empty((x.shape[0], kk), np.float32)
        ids = np.empty((x.shape[0], kk), np.int64)
        ivf.search_preassigned_c(x.shape[0], faiss.swig_ptr(x), kk, faiss.swig_ptr(lists), faiss.swig_ptr(coarse),
                                 faiss.swig_ptr(sims), faiss.swig_ptr(ids), False, params, None)
        return sims, ids

    def nbytes(self) -> int:
        """Approximate resident bytes: codes (fast-scan pads each list to whole blocks of ``bbs`` codes, about half
        a block per non-empty list, estimated so that this stays cheap) and an int64 id per feature."""
        ivf: Any = self.index
        n = self.num_features
        if isinstance(ivf, faiss.IndexIVFFastScan):
            codes = int((n + min(int(ivf.nlist), n) * (int(ivf.bbs) - 1) / 2) * int(ivf.M2) // 2)
        else:
            codes = n * int(ivf.code_size)
        return codes + n * 8

    def to_blob(self) -> np.ndarray:
        """The serialised index, ``(bytes,)`` uint8 (what a snapshot stores)."""
        return backend.serialize(self.index)

    @classmethod
    def from_blob(cls, segment_id: SegmentId, config: IndexConfig, blob: np.ndarray, version: int = 0) -> Segment:
        """Inverse of :meth:`to_blob`.

        Raises:
            ValueError: the blob is not an IVF index.
        """
        index = backend.deserialize(blob)
        if not isinstance(index, faiss.IndexIVF):
            raise ValueError(f"segment {segment_id} is a {type(index).__name__}, not an IVF index")
        return cls(segment_id, config, index, version)


def new_segment(segment_id: SegmentId, config: IndexConfig, template: faiss.Index) -> Segment:
    """An empty segment: a clone of the trained IVF-PQ ``template``."""
    return Segment(segment_id, config, faiss.clone_index(template))
