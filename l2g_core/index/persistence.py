"""Atomic, incremental snapshots of a :class:`RollingIndex`.

Layout of a snapshot directory::

    manifest.json                       the only entry point; replaced atomically (tmp + fsync + rename)
    shard-<camera hash>-<bucket>-v<version>.npz   one file per shard version, written once
    segment-<camera hash>-<number>-v<version>.faiss   one file per segment version (compressed index), written once
    template-<n>.faiss                  trained IVF-PQ codec, when the index is compressed

A save writes the shards changed since the previous save (given the :class:`SnapshotFiles` that the previous
:func:`save_index` or :func:`load_index` of the same index returned; every shard without it), then the manifest,
then deletes files the new manifest no longer names. A crash at any point leaves the previous manifest and its
files intact, so a reader never sees a torn snapshot; leftovers are removed by the next save.

A shard is stored as its :meth:`Shard.to_arrays <l2g_core.index.shard.Shard.to_arrays>` and rebuilt with
:meth:`Shard.from_arrays <l2g_core.index.shard.Shard.from_arrays>`; a segment (the IVF-PQ codes of one camera's
buckets, or a young segment's exact vectors) as its serialised FAISS index; a segment changes with every frame added
to it or bucket evicted from it, so a save rewrites the segments that changed (the open segment of each camera that
received frames). The index is rebuilt with
:meth:`RollingIndex.from_shards <l2g_core.index.rolling.RollingIndex.from_shards>`. This module imports
:mod:`~l2g_core.index.rolling`, never the other way round.

One writer per directory: a second writer's cleanup may delete the files of a save in progress.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from l2g_core.config import IndexConfig
from l2g_core.errors import SnapshotError
from l2g_core.index import backend
from l2g_core.index.rolling import RollingIndex
from l2g_core.index.segment import Segment, SegmentId, new_segment, segment_of
from l2g_core.index.shard import Shard, ShardId

__all__ = ["SnapshotFiles", "load_index", "save_index"]

FORMAT = 2
"""Snapshot layout version. 2: a compressed index's codes are stored per segment (format 1 stored one IVF-PQ index
per shard, which :func:`load_index` no longer reads: such a snapshot is rebuilt from the source)."""
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class SnapshotFiles:
    """The files of one index's snapshot in its directory: what the next :func:`save_index` can keep.

    Attributes:
        shards: per shard, the version written and its file name.
        template: file name of the trained codec (None while the index is flat).
        segments: per segment, the version written and its file name.
    """

    shards: Mapping[ShardId, tuple[int, str]] = dataclasses.field(default_factory=dict)
    template: str | None = None
    segments: Mapping[SegmentId, tuple[int, str]] = dataclasses.field(default_factory=dict)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write via ``write(fileobj)`` into a temporary file beside ``path``, fsync, then rename over it."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _npz_writer(arrays: dict[str, np.ndarray]) -> Callable[[IO[bytes]], None]:
    def write(fh: IO[bytes]) -> None:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # (the stubs match **arrays against allow_pickle)

    return write


def _bytes_writer(blob: np.ndarray) -> Callable[[IO[bytes]], None]:
    def write(fh: IO[bytes]) -> None:
        fh.write(blob.tobytes())

    return write


def _shard_file(shard: Shard) -> str:
    digest = hashlib.sha1(shard.id.camera_id.encode()).hexdigest()[:12]
    return f"shard-{digest}-{shard.id.bucket}-v{shard.version}.npz"


def _segment_file(segment: Segment) -> str:
    digest = hashlib.sha1(segment.id.camera_id.encode()).hexdigest()[:12]
    return f"segment-{digest}-{segment.id.number}-v{segment.version}.faiss"


def _version(name: str) -> int:
    return int(name.rsplit("-v", 1)[1].split(".")[0])


def save_index(index: RollingIndex, directory: str | Path, metadata: Mapping[str, Any] | None = None,
               previous: SnapshotFiles | None = None) -> SnapshotFiles:
    """Snapshot ``index`` into ``directory`` (created if needed) with JSON-serialisable ``metadata``.

    Args:
        index: the index to save.
        directory: the snapshot directory.
        metadata: stored in the manifest and returned by :func:`load_index`.
        previous: what the last successful :func:`save_index` or :func:`load_index` of this same index in this
            directory returned; shards whose version it names (and whose file still exists) are not rewritten.
            Without it every shard is written.

    Returns:
        The files of the new snapshot (pass them as ``previous`` next time).

    Raises:
        SnapshotError: the snapshot could not be written (the previous one stays valid).
    """
    directory = Path(directory)
    metadata = dict(metadata or {})
    previous = previous or SnapshotFiles()
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"snapshot metadata is not JSON-serialisable: {exc}") from exc
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with index.locked():
            entries = []
            written: dict[ShardId, tuple[int, str]] = {}
            for shard in index.shards():
                prev = previous.shards.get(shard.id)
                name = _shard_file(shard)
                if prev is None or prev[0] != shard.version or not (directory / prev[1]).exists():
                    _atomic_write(directory / name, _npz_writer(shard.to_arrays()))
                else:
                    name = prev[1]
                written[shard.id] = (shard.version, name)
                entries.append({"camera_id": shard.id.camera_id, "bucket": shard.id.bucket, "file": name})
            segment_entries = []
            segments_written: dict[SegmentId, tuple[int, str]] = {}
            for segment in index.segments():
                prev = previous.segments.get(segment.id)
                name = _segment_file(segment)
                if prev is None or prev[0] != segment.version or not (directory / prev[1]).exists():
                    _atomic_write(directory / name, _bytes_writer(segment.to_blob()))
                else:
                    name = prev[1]
                segments_written[segment.id] = (segment.version, name)
                segment_entries.append({"camera_id": segment.id.camera_id, "number": segment.id.number,
                                        "file": name})
            template_name = None if index.template is None else previous.template
            if index.template is not None and (template_name is None or not (directory / template_name).exists()):
                template_name = f"template-{os.getpid()}-{len(entries)}.faiss"
                blob = backend.serialize(index.template)
                _atomic_write(directory / template_name, lambda fh: fh.write(blob.tobytes()))
            manifest = {
                "format": FORMAT,
                "config": dataclasses.asdict(index.config),
                "metadata": metadata,
                "newest_timestamp": index.newest_timestamp,
                "template": template_name,
                "shards": entries,
                "segments": segment_entries,
            }
            payload = json.dumps(manifest, indent=1).encode()
            _atomic_write(directory / MANIFEST, lambda fh: fh.write(payload))
            _fsync_dir(directory)
        keep = {MANIFEST, *(e["file"] for e in entries), *(e["file"] for e in segment_entries)}
        keep |= {template_name} if template_name else set()
        for path in directory.iterdir():
            if path.name not in keep and (path.name.startswith(("shard-", "segment-", "template-", ".tmp-"))):
                with contextlib.suppress(OSError):
                    path.unlink()
    except SnapshotError:
        raise
    except OSError as exc:
        raise SnapshotError(f"could not write snapshot to {directory}: {exc}") from exc
    return SnapshotFiles(written, template_name, segments_written)


def load_index(directory: str | Path, config: IndexConfig | None = None
               ) -> tuple[RollingIndex, dict[str, Any], SnapshotFiles]:
    """Load the snapshot in ``directory``.

    Args:
        directory: a directory written by :func:`save_index`.
        config: optional config to use instead of the saved one; dimensions must match.

    Returns:
        ``(index, metadata, files)``; ``files`` lets the next :func:`save_index` of ``index`` keep unchanged
        shard files.

    Raises:
        SnapshotError: missing or unreadable manifest or shard file, or a dimension mismatch.
    """
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise SnapshotError(f"no readable snapshot manifest in {directory}: {exc}") from exc
    if manifest.get("format") != FORMAT:
        raise SnapshotError(
            f"unsupported snapshot format {manifest.get('format')!r} in {directory} (this version reads format "
            f"{FORMAT}: format 1 kept one IVF-PQ index per shard, format 2 one per segment); move the directory "
            "away and the index is rebuilt from the source")
    saved = IndexConfig(**manifest["config"])
    if config is not None and (config.local_dim, config.global_dim) != (saved.local_dim, saved.global_dim):
        raise SnapshotError(
            f"snapshot has dims local={saved.local_dim} global={saved.global_dim}, "
            f"config asks local={config.local_dim} global={config.global_dim}"
        )
    if config is not None and (config.bucket_seconds, config.buckets_per_segment) != (
            saved.bucket_seconds, saved.buckets_per_segment) and manifest["shards"]:
        raise SnapshotError(
            f"snapshot has buckets of {saved.bucket_seconds} s in segments of {saved.buckets_per_segment}, config "
            f"asks {config.bucket_seconds} s in segments of {config.buckets_per_segment}")
    cfg = config or saved
    try:
        template = None
        if manifest["template"]:
            template = backend.deserialize(np.fromfile(directory / manifest["template"], dtype=np.uint8))
        # keep the saved versions so the next change gets a new file name, never the referenced one
        segments: dict[SegmentId, Segment] = {}
        segment_files: dict[SegmentId, tuple[int, str]] = {}
        for entry in manifest["segments"]:
            gid = SegmentId(entry["camera_id"], int(entry["number"]))
            version = _version(entry["file"])
            segments[gid] = Segment.from_blob(gid, cfg, np.fromfile(directory / entry["file"], dtype=np.uint8),
                                              version, template)
            segment_files[gid] = (version, entry["file"])
        shards: list[Shard] = []
        files: dict[ShardId, tuple[int, str]] = {}
        for entry in manifest["shards"]:
            sid = ShardId(entry["camera_id"], int(entry["bucket"]))
            version = _version(entry["file"])
            with np.load(directory / entry["file"]) as data:
                arrays = {k: data[k] for k in data.files}
            segment = None
            if template is not None and "descriptors" in arrays:  # flat in the snapshot, compressed now
                gid = segment_of(sid.camera_id, sid.bucket, cfg)
                if gid not in segments:
                    segments[gid] = new_segment(gid, cfg, template)
                segment = segments[gid]
            shards.append(Shard.from_arrays(sid, cfg, arrays, segment=segment, version=version))
            files[sid] = (version, entry["file"])
        index = RollingIndex.from_shards(cfg, shards, template, segments.values())
    except (OSError, KeyError, ValueError) as exc:
        raise SnapshotError(f"corrupt snapshot in {directory}: {exc}") from exc
    return index, dict(manifest["metadata"]), SnapshotFiles(files, manifest["template"], segment_files)
