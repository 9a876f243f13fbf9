"""Atomic, incremental snapshots of a :class:`RollingIndex`.

Layout of a snapshot directory::

    manifest.json                       the only entry point; replaced atomically (tmp + fsync + rename)
    shard-<camera hash>-<bucket>-v<version>.npz   one file per shard version, written once
    template-<n>.faiss                  trained IVF-PQ codec, when the index is compressed

A save writes the shards changed since the previous save (given the :class:`SnapshotFiles` that the previous
:func:`save_index` or :func:`load_index` of the same index returned; every shard without it), then the manifest,
then deletes files the new manifest no longer names. A crash at any point leaves the previous manifest and its
files intact, so a reader never sees a torn snapshot; leftovers are removed by the next save.

A shard is stored as its :meth:`Shard.to_arrays <l2g_core.index.shard.Shard.to_arrays>` and rebuilt with
:meth:`Shard.from_arrays <l2g_core.index.shard.Shard.from_arrays>`; the index is rebuilt with
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
from l2g_core.index.shard import Shard, ShardId

__all__ = ["SnapshotFiles", "load_index", "save_index"]

FORMAT = 1
MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class SnapshotFiles:
    """The files of one index's snapshot in its directory: what the next :func:`save_index` can keep.

    Attributes:
        shards: per shard, the version written and its file name.
        template: file name of the trained codec (None while the index is flat).
    """

    shards: Mapping[ShardId, tuple[int, str]] = dataclasses.field(default_factory=dict)
    template: str | None = None


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


def _shard_file(shard: Shard) -> str:
    digest = hashlib.sha1(shard.id.camera_id.encode()).hexdigest()[:12]
    return f"shard-{digest}-{shard.id.bucket}-v{shard.version}.npz"


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
            }
            payload = json.dumps(manifest, indent=1).encode()
            _atomic_write(directory / MANIFEST, lambda fh: fh.write(payload))
            _fsync_dir(directory)
        keep = {MANIFEST, *(e["file"] for e in entries)} | ({template_name} if template_name else set())
        for path in directory.iterdir():
            if path.name not in keep and (path.name.startswith(("shard-", "template-", ".tmp-"))):
                with contextlib.suppress(OSError):
                    path.unlink()
    except SnapshotError:
        raise
    except OSError as exc:
        raise SnapshotError(f"could not write snapshot to {directory}: {exc}") from exc
    return SnapshotFiles(written, template_name)


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
        raise SnapshotError(f"unsupported snapshot format {manifest.get('format')!r} in {directory}")
    saved = IndexConfig(**manifest["config"])
    if config is not None and (config.local_dim, config.global_dim) != (saved.local_dim, saved.global_dim):
        raise SnapshotError(
            f"snapshot has dims local={saved.local_dim} global={saved.global_dim}, "
            f"config asks local={config.local_dim} global={config.global_dim}"
        )
    cfg = config or saved
    try:
        template = None
        if manifest["template"]:
            template = backend.deserialize(np.fromfile(directory / manifest["template"], dtype=np.uint8))
        shards: list[Shard] = []
        files: dict[ShardId, tuple[int, str]] = {}
        for entry in manifest["shards"]:
            sid = ShardId(entry["camera_id"], int(entry["bucket"]))
            # keep the saved version so the next change gets a new file name, never the referenced one
            version = int(entry["file"].rsplit("-v", 1)[1].split(".")[0])
            with np.load(directory / entry["file"]) as data:
                shards.append(Shard.from_arrays(sid, cfg, {k: data[k] for k in data.files}, template=template,
                                                version=version))
            files[sid] = (version, entry["file"])
    except (OSError, KeyError, ValueError) as exc:
        raise SnapshotError(f"corrupt snapshot in {directory}: {exc}") from exc
    index = RollingIndex.from_shards(cfg, shards, template)
    return index, dict(manifest["metadata"]), SnapshotFiles(files, manifest["template"])
