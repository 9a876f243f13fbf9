"""RollingIndex: local and global features of recent frames, sharded by camera and time bucket; once compressed,
the local descriptors of each camera's consecutive buckets share one search unit (a segment)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np

from l2g_core.config import IndexConfig
from l2g_core.errors import ShapeError
from l2g_core.index import backend
from l2g_core.index.segment import Segment, SegmentId, new_segment, segment_of
from l2g_core.index.shard import Shard, ShardId, new_shard
from l2g_core.types import FrameFeatures, FrameKey

__all__ = ["AddReport", "IndexStats", "RollingIndex"]

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexStats:
    """Size of the index.

    Attributes:
        frames, features, shards: counts.
        segments: search units of a compressed index (0 while flat).
        oldest_timestamp, newest_timestamp: event-time span of the indexed frames (None when empty).
        nbytes: approximate resident bytes.
        kind: ``flat`` or ``ivfpq`` (the kind new shards get).
    """

    frames: int
    features: int
    shards: int
    oldest_timestamp: float | None
    newest_timestamp: float | None
    nbytes: int
    kind: str
    segments: int = 0

    @property
    def time_span_seconds(self) -> float:
        """``newest - oldest`` event time, 0 when empty."""
        if self.oldest_timestamp is None or self.newest_timestamp is None:
            return 0.0
        return self.newest_timestamp - self.oldest_timestamp


@dataclass(frozen=True)
class AddReport:
    """What :meth:`RollingIndex.add` did with a batch, frame by frame.

    Attributes:
        added: frames newly indexed.
        duplicates: frames skipped because a frame with the same ``FrameKey.dedup_key`` is already indexed (or
            appears earlier in the batch).
        too_old: frames skipped because they are older than the retention horizon.
        evicted: frames already indexed that retention dropped after the batch moved the newest event time on.

    ``added + duplicates + too_old`` is the batch size.
    """

    added: int = 0
    duplicates: int = 0
    too_old: int = 0
    evicted: int = 0


class RollingIndex:
    """Time-windowed index of frame features.

    Frames are grouped into shards, one per ``(camera, time bucket)``. Once the index is compressed (IVF-PQ), the
    local descriptors of one camera's shards over ``config.segment_seconds`` live in one
    :class:`~l2g_core.index.segment.Segment`, which stage 1 searches as one unit. Retention drops whole shards
    (and their features from their segment: one id range), which releases their memory; camera and time filters
    select shards before any search, and segments search only the selected shards' id ranges. Duplicates (same
    ``(camera_id, sequence)``) are skipped, which makes at-least-once delivery idempotent. All methods are
    thread-safe: searches and appends serialise on one re-entrant lock.

    Args:
        config: dimensions, retention and FAISS settings.
    """

    def __init__(self, config: IndexConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._shards: dict[ShardId, Shard] = {}
        self._segments: dict[SegmentId, Segment] = {}
        self._where: dict[tuple[str, int, int], ShardId] = {}
        self._newest: float | None = None
        self._newest_by_camera: dict[str, float] = {}
        self._template: faiss.Index | None = None
        self._features = 0
        if config.index_kind == "ivfpq":
            LOG.info("index_kind=ivfpq: the first %d features are held flat until the codec is trained",
                     config.train_size)

    # ------------------------------------------------------------------ state
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the index lock (for a consistent multi-step read)."""
        with self._lock:
            yield

    def __len__(self) -> int:
        with self._lock:
            return len(self._where)

    def contains(self, key: FrameKey) -> bool:
        """Whether a frame with this ``(camera_id, sequence)`` is indexed."""
        with self._lock:
            return key.dedup_key in self._where

    @property
    def template(self) -> faiss.Index | None:
        """The trained IVF-PQ codec shared by compressed shards (None while flat)."""
        return self._template

    @property
    def newest_timestamp(self) -> float | None:
        """Newest event time ever added (the retention watermark)."""
        return self._newest

    def segment(self, shard: Shard) -> Segment | None:
        """The segment holding a compressed shard's descriptors (None for a flat shard)."""
        if shard.index is not None:
            return None
        return self._segments[shard.segment_id]

    def segments(self) -> list[Segment]:
        """All segments (search units of a compressed index)."""
        with self._lock:
            return sorted(self._segments.values(), key=lambda g: (-g.id.number, g.id.camera_id))

    def shards(self) -> list[Shard]:
        """All shards, newest bucket first."""
        with self._lock:
            return sorted(self._shards.values(), key=lambda s: (-s.id.bucket, s.id.camera_id))

    def select(
        self, cameras: Collection[str] | None = None, time_range: tuple[float, float] | None = None
    ) -> list[Shard]:
        """Shards that may hold frames of ``cameras`` within ``time_range`` (inclusive), newest first."""
        chosen = []
        for shard in self.shards():
            if cameras is not None and shard.id.camera_id not in cameras:
                continue
            if time_range is not None:
                start, end = shard.time_range
                if end <= time_range[0] or start > time_range[1]:
                    continue
            chosen.append(shard)
        return chosen

    def stats(self) -> IndexStats:
        """Current counts, time span and memory."""
        with self._lock:
            stamps = [(float(s.timestamps.min()), float(s.timestamps.max())) for s in self._shards.values() if len(s)]
            return IndexStats(
                frames=len(self._where),
                features=self._features,
                shards=len(self._shards),
                oldest_timestamp=min(a for a, _ in stamps) if stamps else None,
                newest_timestamp=max(b for _, b in stamps) if stamps else None,
                nbytes=sum(s.nbytes() for s in self._shards.values())
                + sum(g.nbytes() for g in self._segments.values()),
                kind="flat" if self._template is None else "ivfpq",
                segments=len(self._segments),
            )

    # ------------------------------------------------------------------ writes
    def _check(self, feat: FrameFeatures) -> None:
        if feat.descriptors.shape[1] != self.config.local_dim:
            raise ShapeError(
                f"local descriptors have dimension {feat.descriptors.shape[1]}, index expects {self.config.local_dim}"
            )
        if feat.global_descriptor.shape[0] != self.config.global_dim:
            raise ShapeError(
                f"global descriptor has dimension {feat.global_descriptor.shape[0]}, "
                f"index expects {self.config.global_dim}"
            )

    def _horizon(self, camera_id: str) -> float:
        """Retention horizon of one camera: its own newest event time minus the retention. Each camera keeps its own
        window, so no camera's clock (ahead, or poisoned) evicts another's frames; a camera that stops keeps its last
        window (memory stays bounded by cameras x retention)."""
        newest = self._newest_by_camera.get(camera_id)
        if self.config.retention_seconds is None or newest is None:
            return -math.inf
        return newest - self.config.retention_seconds

    @classmethod
    def from_shards(cls, config: IndexConfig, shards: Iterable[Shard], template: faiss.Index | None = None,
                    segments: Iterable[Segment] = ()) -> RollingIndex:
        """An index holding fully built ``shards`` (e.g. restored from a snapshot by
        :func:`l2g_core.index.persistence.load_index`).

        Args:
            config: the index configuration (the shards' dimensions).
            shards: shards with distinct ids, built for ``config``.
            template: the trained IVF-PQ codec of compressed shards (None while the index is flat).
            segments: the segments holding the compressed shards' descriptors.

        Raises:
            ValueError: a compressed shard has no segment, or a segment no shard.
        """
        index = cls(config)
        index._template = template
        index._segments = {g.id: g for g in segments}
        for shard in shards:
            index._attach(shard)
        needed: set[SegmentId] = set()
        for shard in index._shards.values():
            if shard.index is None:
                gid = shard.segment_id
                needed.add(gid)
                if gid in index._segments:
                    index._segments[gid].buckets.add(shard.id.bucket)
        if needed != set(index._segments):
            raise ValueError(f"segments {sorted(set(index._segments) ^ needed)} do not match the compressed shards")
        return index

    def add(self, keys: Sequence[FrameKey], features: Sequence[FrameFeatures]) -> AddReport:
        """Append a batch of frames, then apply retention.

        Frames already indexed (same ``(camera_id, sequence)``) and frames older than the retention horizon
        are skipped. The batch is validated before anything is added.

        Args:
            keys: one key per frame.
            features: one :class:`FrameFeatures` per frame, with the index's dimensions.

        Returns:
            How many frames were added, skipped as duplicates or as too old, and evicted by retention.

        Raises:
            ShapeError: on a length or dimension mismatch (nothing is added).
        """
        if len(keys) != len(features):
            raise ShapeError(f"{len(keys)} keys but {len(features)} feature sets")
        for feat in features:
            self._check(feat)
        with self._lock:
            for key in keys:
                self._note_time(key)
            groups: dict[ShardId, tuple[list[FrameKey], list[FrameFeatures]]] = {}
            seen: set[tuple[str, int, int]] = set()
            duplicates = too_old = 0
            for key, feat in zip(keys, features, strict=True):
                if key.dedup_key in self._where or key.dedup_key in seen:
                    duplicates += 1
                    continue
                if key.timestamp < self._horizon(key.camera_id):
                    too_old += 1
                    continue
                seen.add(key.dedup_key)
                sid = ShardId(key.camera_id, math.floor(key.timestamp / self.config.bucket_seconds))
                group = groups.setdefault(sid, ([], []))
                group[0].append(key)
                group[1].append(feat.top(self.config.max_features_per_frame))
            added = 0
            for sid, (gkeys, gfeats) in groups.items():
                shard = self._shards.get(sid)
                if shard is None:
                    shard = self._shards[sid] = (new_shard(sid, self.config) if self._template is None
                                                 else Shard(sid, self.config, None))
                before = shard.num_features
                shard.add(gkeys, gfeats, self._segment_for(sid))
                self._features += shard.num_features - before
                for key in gkeys:
                    self._where[key.dedup_key] = sid
                added += len(gkeys)
            evicted = self.evict_expired()
            self._maybe_compress()
            return AddReport(added=added, duplicates=duplicates, too_old=too_old, evicted=evicted)

    def _maybe_compress(self) -> None:
        kind = self.config.index_kind
        if self._template is not None or kind == "flat" or self.config.local_dim % self.config.pq_bytes:
            return  # (auto with a dimension PQ cannot split stays flat)
        threshold = self.config.train_size if kind == "ivfpq" else self.config.compress_after
        if self._features < max(threshold, 39):
            return
        flat = [s for s in self._shards.values() if s.kind == "flat"]
        rng = np.random.default_rng(0)
        pool = np.concatenate([d for s in flat if (d := s.raw_descriptors()) is not None])
        sample = pool[rng.choice(pool.shape[0], min(pool.shape[0], self.config.train_size), replace=False)]
        LOG.info("training IVF-PQ on %d of %d features", sample.shape[0], pool.shape[0])
        self._template = backend.train_ivfpq(sample, self.config)
        for shard in flat:
            segment = self._segment_for(shard.id)
            assert segment is not None
            shard.compress(segment)

    def _segment_for(self, sid: ShardId) -> Segment | None:
        """The segment of shard ``sid`` (created when missing) once the index is compressed, else None."""
        if self._template is None:
            return None
        gid = segment_of(sid.camera_id, sid.bucket, self.config)
        segment = self._segments.get(gid)
        if segment is None:
            segment = self._segments[gid] = new_segment(gid, self.config, self._template)
        segment.buckets.add(sid.bucket)
        return segment

    def _attach(self, shard: Shard) -> None:
        with self._lock:
            self._shards[shard.id] = shard
            self._features += shard.num_features
            for key in shard.keys:
                self._where[key.dedup_key] = shard.id
                self._note_time(key)

    def _note_time(self, key: FrameKey) -> None:
        self._newest = key.timestamp if self._newest is None else max(self._newest, key.timestamp)
        previous = self._newest_by_camera.get(key.camera_id)
        self._newest_by_camera[key.camera_id] = key.timestamp if previous is None else max(previous, key.timestamp)

    def evict_before(self, timestamp: float) -> int:
        """Drop every shard whose bucket ends at or before ``timestamp``; returns frames dropped."""
        with self._lock:
            return self._drop([sid for sid, s in self._shards.items() if s.time_range[1] <= timestamp])

    def evict_expired(self) -> int:
        """Apply retention, each camera relative to its own newest event time; returns frames dropped."""
        with self._lock:
            return self._drop([sid for sid, shard in self._shards.items()
                               if shard.time_range[1] <= self._horizon(sid.camera_id)])

    def _drop(self, expired: list[ShardId]) -> int:
        dropped = 0
        with self._lock:
            for sid in expired:
                shard = self._shards.pop(sid)
                if shard.index is None:
                    segment = self._segments[shard.segment_id]
                    segment.buckets.discard(sid.bucket)
                    if segment.buckets:
                        segment.remove_bucket(sid.bucket)
                    else:
                        del self._segments[segment.id]  # its last shard: drop it whole
                for key in shard.keys:
                    self._where.pop(key.dedup_key, None)
                self._features -= shard.num_features
                dropped += len(shard)
        if dropped:
            LOG.info("evicted %d frames (%d shards) past retention", dropped, len(expired))
        return dropped
