"""One rolling index per Kafka partition, snapshotted per partition, searched together.

The index follows the partition: a worker holds one :class:`~l2g_core.RollingIndex` per assigned video partition.
When a partition moves (rebalance, crash, scale-out) its new owner loads the partition's last snapshot from the
shared snapshot directory and replays the topic from the group's committed offset (see :mod:`stream.ingest`);
frames already in the snapshot are skipped by frame key. Each frame therefore lives on exactly one worker, and the
answers of several workers to one query can simply be merged.

Snapshot layout::

    <snapshot_dir>/<extractor>-<hash of the extractor's identity, dimensions, index settings>/<topic>-<partition>/

Snapshots of another extractor, configuration or weights file (the identity holds its sha256) live under another tag
and are never loaded by mistake.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from l2g_core import (
    FrameFeatures,
    IndexConfig,
    IndexStats,
    RollingIndex,
)
from l2g_core.errors import SnapshotError
from l2g_core.index.persistence import SnapshotFiles, load_index, save_index
from l2g_core.index.rolling import AddReport
from stream.errors import ConfigurationError
from stream.ports import Partition
from stream.settings import IndexSettings

__all__ = ["PartitionedIndex", "SnapshotReport", "StoreStats", "index_tag"]

LOG = logging.getLogger(__name__)


def index_tag(extractor: str, identity: Mapping[str, Any], config: IndexConfig) -> str:
    """Directory name for snapshots of this extractor and index configuration.

    Args:
        extractor: the extractor's name (the readable prefix).
        identity: the extractor's ``snapshot_identity()`` (feature options and the sha256 of its weights files):
            other weights or options give another tag, so their snapshots are never loaded.
        config: the index configuration.
    """
    blob = json.dumps(
        {"extractor": extractor, "identity": identity, "local_dim": config.local_dim,
         "global_dim": config.global_dim, "max_features_per_frame": config.max_features_per_frame,
         "bucket_seconds": config.bucket_seconds, "segment_seconds": config.segment_seconds},
        sort_keys=True, default=str,
    )
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in extractor)
    return f"{safe}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


@dataclass(frozen=True)
class StoreStats:
    """Totals over every partition index (fields as in ``l2g_core.IndexStats``)."""

    frames: int
    features: int
    shards: int
    nbytes: int
    oldest_timestamp: float | None
    newest_timestamp: float | None
    partitions: int


@dataclass(frozen=True)
class SnapshotReport:
    """What :meth:`PartitionedIndex.snapshot` did.

    Attributes:
        written: partitions whose snapshot was written (their offsets may be committed), in order.
        failed: partitions whose snapshot failed (disk full, I/O error), with the error; each keeps its previous
            snapshot, stays dirty and is written by the next snapshot.
    """

    written: tuple[Partition, ...] = ()
    failed: Mapping[Partition, SnapshotError] = field(default_factory=dict)


class PartitionedIndex:
    """Rolling indexes keyed by partition, with per-partition snapshots (searched by :mod:`stream.query`).

    Args:
        config: index configuration (dimensions from the extractor).
        snapshot_root: the tag directory (``<snapshot_dir>/<index_tag>``), or None to keep everything in memory.
    """

    def __init__(self, config: IndexConfig, snapshot_root: Path | None) -> None:
        self.config = config
        self.snapshot_root = snapshot_root
        self._lock = threading.Lock()
        self._indexes: dict[Partition, RollingIndex] = {}
        self._dirty: set[Partition] = set()
        self._files: dict[Partition, SnapshotFiles] = {}  # per partition, what its snapshot directory holds

    @classmethod
    def from_settings(cls, settings: IndexSettings, *, extractor: str, options: dict[str, Any], local_dim: int,
                      global_dim: int) -> PartitionedIndex:
        """Build from settings and the extractor's dimensions.

        Raises:
            ConfigurationError: invalid index options.
        """
        from l2g_core import L2GError

        try:
            config = IndexConfig(local_dim=local_dim, global_dim=global_dim, bucket_seconds=settings.bucket_seconds,
                                 retention_seconds=settings.retention_seconds,
                                 max_features_per_frame=settings.max_features_per_frame,
                                 segment_seconds=settings.segment_seconds,
                                 rerank_features=settings.rerank_features, rerank_dtype=settings.rerank_dtype,
                                 index_kind=settings.index_kind, device=settings.device,
                                 gpu_id=settings.gpu_id)
        except (L2GError, TypeError) as exc:
            raise ConfigurationError(f"invalid index settings: {exc}") from exc
        root = settings.snapshot_dir / index_tag(extractor, options, config) if settings.snapshot_dir else None
        return cls(config, root)

    # ------------------------------------------------------------------ partitions
    def _path(self, part: Partition) -> Path | None:
        if self.snapshot_root is None:
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in part.topic)
        return self.snapshot_root / f"{safe}-{part.partition}"

    def open(self, part: Partition) -> int | None:
        """Make ``part``'s index available, loading its snapshot when one exists.

        Returns:
            The snapshot's next offset to read, or None without a snapshot.

        Raises:
            ConfigurationError: the snapshot exists but cannot be loaded.
        """
        with self._lock:
            if part in self._indexes:
                return None
        path = self._path(part)
        offset: int | None = None
        files = SnapshotFiles()
        if path is not None and path.exists():
            t0 = time.perf_counter()
            try:
                index, meta, files = load_index(path)
            except Exception as exc:
                raise ConfigurationError(f"cannot load the snapshot of {part} at {path}: {exc}") from exc
            offset = int(meta["offset"]) if meta.get("offset") is not None else None
            LOG.info("loaded snapshot of %s: %d frames, next offset %s (%.2f s)", part, len(index), offset,
                     time.perf_counter() - t0)
        else:
            index = RollingIndex(self.config)
        with self._lock:
            self._indexes[part] = index
            self._files[part] = files
        return offset

    def close_partition(self, part: Partition) -> None:
        """Forget ``part``'s index (after a final snapshot: it now belongs to another worker)."""
        with self._lock:
            self._indexes.pop(part, None)
            self._dirty.discard(part)
            self._files.pop(part, None)

    def partitions(self) -> list[Partition]:
        """Partitions with an open index."""
        with self._lock:
            return sorted(self._indexes)

    def get(self, part: Partition) -> RollingIndex:
        """The index of ``part`` (opened with :meth:`open`)."""
        with self._lock:
            return self._indexes[part]

    def items(self) -> Iterator[tuple[Partition, RollingIndex]]:
        """``(partition, index)`` pairs (a copy: safe against concurrent rebalances)."""
        with self._lock:
            pairs = sorted(self._indexes.items())
        yield from pairs

    # ------------------------------------------------------------------ writes
    def add(self, part: Partition, keys: list[Any], features: list[FrameFeatures]) -> AddReport:
        """Add frames to ``part``'s index; returns what ``RollingIndex.add`` did (added, duplicates, evicted)."""
        index = self.get(part)
        report = index.add(keys, features)
        if report.added or report.evicted:
            with self._lock:
                self._dirty.add(part)
        return report

    def mark_dirty(self, part: Partition) -> None:
        """Force the next :meth:`snapshot` to write ``part`` (its offset moved without new frames)."""
        with self._lock:
            if part in self._indexes:
                self._dirty.add(part)

    def evict_expired(self) -> int:
        """Apply retention to every partition index; returns frames dropped."""
        dropped = 0
        for part, index in self.items():
            n = index.evict_expired()
            if n:
                dropped += n
                with self._lock:
                    self._dirty.add(part)
        return dropped

    def snapshot(self, offsets: dict[Partition, int], metadata: dict[str, Any],
                 only: Collection[Partition] | None = None) -> SnapshotReport:
        """Write the snapshots of dirty partitions (or of ``only``), each with its next offset.

        A failure of one partition (``SnapshotError``: disk full, I/O error) does not stop the others. A failed
        partition keeps its previous snapshot (writes are atomic), stays dirty and is retried by the next call.

        Args:
            offsets: next offset to read per partition; a partition without one is skipped.
            metadata: extra metadata stored with every snapshot.
            only: restrict to these partitions (e.g. the ones being revoked).

        Returns:
            The partitions written and the ones that failed, with their errors.
        """
        if self.snapshot_root is None:
            return SnapshotReport()
        with self._lock:
            todo = [p for p in sorted(self._dirty) if (only is None or p in only) and p in offsets]
            indexes = {p: self._indexes[p] for p in todo}
            previous = {p: self._files.get(p) for p in todo}
        written: list[Partition] = []
        failed: dict[Partition, SnapshotError] = {}
        for part in todo:
            path = self._path(part)
            assert path is not None
            meta = {**metadata, "topic": part.topic, "partition": part.partition, "offset": offsets[part],
                    "saved_at": time.time()}
            try:
                files = self._write(indexes[part], path, meta, previous[part])
            except SnapshotError as exc:  # the previous snapshot stays valid (writes are atomic); retried next time
                LOG.error("snapshot of %s to %s failed: %s", part, path, exc)
                failed[part] = exc
                continue
            with self._lock:
                self._dirty.discard(part)
                if self._indexes.get(part) is indexes[part]:  # not closed (or reopened) meanwhile
                    self._files[part] = files
            written.append(part)
        return SnapshotReport(tuple(written), failed)

    @staticmethod
    def _write(index: RollingIndex, path: Path, meta: dict[str, Any], previous: SnapshotFiles | None
               ) -> SnapshotFiles:
        """Save one partition's snapshot; every failure is a ``SnapshotError``."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SnapshotError(f"cannot create the snapshot directory {path.parent}: {exc}") from exc
        return save_index(index, path, meta, previous)

    # ------------------------------------------------------------------ reads
    def stats(self) -> StoreStats:
        """Totals over all partitions."""
        parts: list[IndexStats] = [index.stats() for _, index in self.items()]
        olds = [s.oldest_timestamp for s in parts if s.oldest_timestamp is not None]
        news = [s.newest_timestamp for s in parts if s.newest_timestamp is not None]
        return StoreStats(
            frames=sum(s.frames for s in parts), features=sum(s.features for s in parts),
            shards=sum(s.shards for s in parts), nbytes=sum(s.nbytes for s in parts),
            oldest_timestamp=min(olds) if olds else None, newest_timestamp=max(news) if news else None,
            partitions=len(parts),
        )

    def __len__(self) -> int:
        return sum(len(index) for _, index in self.items())
