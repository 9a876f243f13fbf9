"""One search unit of a compressed rolling index: the local descriptors of one camera over many time buckets, exact
while the segment is young, then IVF-PQ codes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, NamedTuple

import faiss
import numpy as np

from l2g_core.config import IndexConfig
from l2g_core.errors import IndexStateError
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
    in one IVF-PQ index (a clone of the rolling index's trained template) once it holds
    ``config.exact_segment_features``; before that, a *young* segment keeps them exact (float32, searched by brute
    force) and moves them into the codes when it reaches that size.

    A young segment is exact because IVF-PQ is poor on a sparse segment: with fewer features than lists, the
    ``nprobe`` lists nearest a query descriptor hold few of its true neighbours (a one-photo camera lost 28 points
    of AP against exact search, docs/scaling.md). Brute force over 4 096 vectors takes ~2.4 ms for 128 query
    descriptors on two threads (0.7 ms as codes), and a camera's segment is young for its first ~11 frames.

    Stage 1 searches one segment instead of one small index per bucket: the cost of an IVF fast-scan search is
    mostly fixed per (query descriptor, index), so fewer, larger indexes are faster. The frames' keys, globals and
    re-rank features stay in their per-bucket :class:`~l2g_core.index.shard.Shard`; a feature's id encodes its
    bucket and frame (:data:`BUCKET_SHIFT`), so a bucket is selected by an id range (time filters) and removed by
    one (retention).

    Not thread-safe: :class:`~l2g_core.index.rolling.RollingIndex` serialises access.

    Args:
        segment_id: camera and segment number.
        config: the index configuration.
        index: an IVF index (clone of the template, or deserialised), or a young segment's exact
            ``IndexIDMap`` over an ``IndexFlatIP``.
        version: changes with every add or removal (snapshots rewrite a segment file when it changes).
        template: the trained IVF-PQ codec a young segment's descriptors move into (required to add to a young
            segment).
    """

    def __init__(self, segment_id: SegmentId, config: IndexConfig, index: faiss.Index, version: int = 0,
                 template: faiss.Index | None = None) -> None:
        self.id = segment_id
        self.config = config
        self.index = index
        self.version = version
        self.template = template
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

    @property
    def exact(self) -> bool:
        """Whether the segment is young: its descriptors are exact vectors, not yet IVF-PQ codes."""
        return not isinstance(self.index, faiss.IndexIVF)

    def _exact_vectors(self) -> tuple[FloatArray, np.ndarray]:
        """A young segment's ``(n, D)`` float32 vectors (a view) and ``(n,)`` int64 ids."""
        idmap: Any = self.index
        flat: Any = faiss.downcast_index(idmap.index)
        n, d = int(flat.ntotal), int(flat.d)
        vectors: FloatArray = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d) if n else np.zeros((0, d),
                                                                                                    np.float32)
        return vectors, faiss.vector_to_array(idmap.id_map).astype(np.int64, copy=False)

    def _promote(self) -> None:
        """Move a young segment's vectors into IVF-PQ codes (a clone of the template)."""
        if self.template is None:
            raise IndexStateError(f"segment {self.id} is young and has no IVF-PQ template to move into")
        codes = faiss.clone_index(self.template)
        vectors, ids = self._exact_vectors()
        if ids.size:
            codes.add_with_ids(np.ascontiguousarray(vectors), np.ascontiguousarray(ids))
        self.index = codes

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
        if self.exact and self.num_features + descriptors.shape[0] >= self.config.exact_segment_features:
            self._promote()
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
    def coarse_key(self) -> str | None:
        """Identity of the coarse quantizer (its centroids) and ``nprobe``: segments with the same key probe the
        same lists for the same query, so one :meth:`assign` serves them all (every segment of one template).
        None for a young segment (:attr:`exact`), which has no lists."""
        if self.exact:
            return None
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
        """The lists that ``queries`` ``(Q, D)`` float32 probe (``nprobe`` each; not for a young segment)."""
        assert not self.exact, f"segment {self.id} is young: it has no lists"
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
                None; ignored by a young segment, which is searched exactly).
            buckets: only features of buckets ``first..last`` (inclusive); None: every bucket.

        Returns:
            ``(sims, ids)``: ``(Q, k')`` float32 inner products (descending per row) and ``(Q, k')`` int64 feature
            ids (see :data:`BUCKET_SHIFT`), ``-1`` where fewer than ``k'`` neighbours exist.
        """
        kk = min(k, self.num_features)
        if kk == 0:
            return np.zeros((queries.shape[0], 0), np.float32), np.zeros((queries.shape[0], 0), np.int64)
        if self.exact:
            return self._search_exact(queries, kk, buckets)
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

    def _search_exact(self, queries: FloatArray, k: int, buckets: tuple[int, int] | None
                      ) -> tuple[FloatArray, np.ndarray]:
        """:meth:`search` of a young segment: brute force over its vectors (those of ``buckets``), ``k`` columns
        padded with ``-inf`` / ``-1`` where fewer vectors are selected."""
        vectors, ids = self._exact_vectors()
        if buckets is not None:
            lo, hi = self._range(*buckets)
            chosen = (ids >= lo) & (ids < hi)
            vectors, ids = vectors[chosen], ids[chosen]
        sims = np.full((queries.shape[0], k), -np.inf, np.float32)
        found = np.full((queries.shape[0], k), -1, np.int64)
        kk = min(k, ids.size)
        if kk:
            top_sims, rows = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), np.ascontiguousarray(vectors),
                                       kk, metric=faiss.METRIC_INNER_PRODUCT)
            sims[:, :kk] = top_sims
            found[:, :kk] = np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)
        return sims, found

    def nbytes(self) -> int:
        """Approximate resident bytes: codes (fast-scan pads each list to whole blocks of ``bbs`` codes, about half
        a block per non-empty list, estimated so that this stays cheap) and an int64 id per feature."""
        ivf: Any = self.index
        n = self.num_features
        if self.exact:
            return n * (self.config.local_dim * 4 + 8)
        if isinstance(ivf, faiss.IndexIVFFastScan):
            codes = int((n + min(int(ivf.nlist), n) * (int(ivf.bbs) - 1) / 2) * int(ivf.M2) // 2)
        else:
            codes = n * int(ivf.code_size)
        return codes + n * 8

    def to_blob(self) -> np.ndarray:
        """The serialised index, ``(bytes,)`` uint8 (what a snapshot stores)."""
        return backend.serialize(self.index)

    @classmethod
    def from_blob(cls, segment_id: SegmentId, config: IndexConfig, blob: np.ndarray, version: int = 0,
                  template: faiss.Index | None = None) -> Segment:
        """Inverse of :meth:`to_blob` (``template``: as for the constructor).

        Raises:
            ValueError: the blob is neither an IVF index nor a young segment's ``IndexIDMap`` over an
                ``IndexFlatIP``.
        """
        index = backend.deserialize(blob)
        young = isinstance(index, faiss.IndexIDMap) and isinstance(faiss.downcast_index(index.index),
                                                                   faiss.IndexFlatIP)
        if not (young or isinstance(index, faiss.IndexIVF)):
            raise ValueError(f"segment {segment_id} is a {type(index).__name__}, not an IVF index or a young "
                             "segment's exact vectors")
        return cls(segment_id, config, index, version, template)


def new_segment(segment_id: SegmentId, config: IndexConfig, template: faiss.Index) -> Segment:
    """An empty segment: young (exact vectors) when ``config.exact_segment_features`` > 0, else a clone of the
    trained IVF-PQ ``template``."""
    if config.exact_segment_features > 0:
        index: faiss.Index = faiss.IndexIDMap(faiss.IndexFlatIP(config.local_dim))
    else:
        index = faiss.clone_index(template)
    return Segment(segment_id, config, index, template=template)
