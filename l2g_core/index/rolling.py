"""RollingIndex: local and global features of recent frames, sharded by camera and time bucket."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from l2g_core.config import IndexConfig
from l2g_core.errors import ShapeError
from l2g_core.index import backend
from l2g_core.index.shard import Shard, ShardId, new_shard
from l2g_core.types import FrameFeatures, FrameKey

__all__ = ["IndexStats", "RollingIndex"]

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexStats:
    """Size of the index.

    Attributes:
        frames, features, shards: counts.
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

    @property
    def time_span_seconds(self) -> float:
        """``newest - oldest`` event time, 0 when empty."""
        if self.oldest_timestamp is None or self.newest_timestamp is None:
            return 0.0
        return self.newest_timestamp - self.oldest_timestamp


class RollingIndex:
    """Time-windowed index of frame features.

    Frames are grouped into shards, one per ``(camera, time bucket)``. Retention drops whole shards, which
    releases their memory; camera and time filters select shards before any search. Duplicates (same
    ``(camera_id, sequence)``) are skipped, which makes at-least-once delivery idempotent. All methods are
    thread-safe: searches and appends serialise on one re-entrant lock.

    Args:
        config: dimensions, retention and FAISS settings.
    """

    def __init__(self, config: IndexConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._shards: dict[ShardId, Shard] = {}
        self._where: dict[tuple[str, int], ShardId] = {}
        self._newest: float | None = None
        self._template: faiss.Index | None = None
        self._features = 0
        # bookkeeping for incremental snapshots, owned by l2g_core.index.persistence
        self.saved_files: dict[ShardId, tuple[int, str]] = {}
        self.saved_template: str | None = None
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
                nbytes=sum(s.nbytes() for s in self._shards.values()),
                kind="flat" if self._template is None else "ivfpq",
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

    def _horizon(self) -> float:
        if self.config.retention_seconds is None or self._newest is None:
            return -math.inf
        return self._newest - self.config.retention_seconds

    def add(self, keys: Sequence[FrameKey], features: Sequence[FrameFeatures]) -> int:
        """Append a batch of frames.

        Frames already indexed (same ``(camera_id, sequence)``) and frames older than the retention horizon
        are skipped. The batch is validated before anything is added.

        Args:
            keys: one key per frame.
            features: one :class:`FrameFeatures` per frame, with the index's dimensions.

        Returns:
            Number of frames actually added.

        Raises:
            ShapeError: on a length or dimension mismatch (nothing is added).
        """
        if len(keys) != len(features):
            raise ShapeError(f"{len(keys)} keys but {len(features)} feature sets")
        for feat in features:
            self._check(feat)
        with self._lock:
            if keys:
                newest = max(k.timestamp for k in keys)
                self._newest = newest if self._newest is None else max(self._newest, newest)
            horizon = self._horizon()
            groups: dict[ShardId, tuple[list[FrameKey], list[FrameFeatures]]] = {}
            seen: set[tuple[str, int]] = set()
            for key, feat in zip(keys, features, strict=True):
                if key.dedup_key in self._where or key.dedup_key in seen or key.timestamp < horizon:
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
                    shard = self._shards[sid] = new_shard(sid, self.config, self._template)
                before = shard.num_features
                shard.add(gkeys, gfeats)
                self._features += shard.num_features - before
                for key in gkeys:
                    self._where[key.dedup_key] = sid
                added += len(gkeys)
            self.evict_expired()
            self._maybe_compress()
            return added

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
            shard.compress(self._template)

    def set_template(self, template: faiss.Index | None) -> None:
        """Install a trained codec (used when loading a snapshot)."""
        with self._lock:
            self._template = template

    def attach(self, shard: Shard) -> None:
        """Insert a fully built shard (used when loading a snapshot)."""
        with self._lock:
            self._shards[shard.id] = shard
            self._features += shard.num_features
            for key in shard.keys:
                self._where[key.dedup_key] = shard.id
                self._newest = key.timestamp if self._newest is None else max(self._newest, key.timestamp)

    def evict_before(self, timestamp: float) -> int:
        """Drop every shard whose bucket ends at or before ``timestamp``; returns frames dropped."""
        dropped = 0
        with self._lock:
            for sid in [sid for sid, s in self._shards.items() if s.time_range[1] <= timestamp]:
                shard = self._shards.pop(sid)
                for key in shard.keys:
                    self._where.pop(key.dedup_key, None)
                self._features -= shard.num_features
                dropped += len(shard)
        if dropped:
            LOG.info("evicted %d frames older than %.3f", dropped, timestamp)
        return dropped

    def evict_expired(self) -> int:
        """Apply retention relative to the newest event time; returns frames dropped."""
        with self._lock:
            horizon = self._horizon()
            return 0 if horizon == -math.inf else self.evict_before(horizon)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path, metadata: Mapping[str, Any] | None = None) -> None:
        """Write an atomic, incremental snapshot to the directory ``path``; see :mod:`.persistence`."""
        from l2g_core.index.persistence import save_index

        save_index(self, Path(path), dict(metadata or {}))

    @classmethod
    def load(cls, path: str | Path, config: IndexConfig | None = None) -> tuple[RollingIndex, dict[str, Any]]:
        """Load a snapshot written by :meth:`save`; returns the index and the saved metadata."""
        from l2g_core.index.persistence import load_index

        return load_index(Path(path), config)
