"""Atomic, incremental snapshots of a :class:`RollingIndex`.

Layout of a snapshot directory::

    manifest.json                       the only entry point; replaced atomically (tmp + fsync + rename)
    shard-<camera hash>-<bucket>-v<version>.npz   one file per shard version, written once
    template-<n>.faiss                  trained IVF-PQ codec, when the index is compressed

A save writes only shards changed since the previous save, then the manifest, then deletes files the new
manifest no longer names. A crash at any point leaves the previous manifest and its files intact, so a
reader never sees a torn snapshot; leftovers are removed by the next save.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from l2g_core.config import IndexConfig
from l2g_core.errors import SnapshotError
from l2g_core.index import backend
from l2g_core.index.rolling import RollingIndex
from l2g_core.index.shard import Shard, ShardId, new_shard
from l2g_core.types import FrameKey

__all__ = ["load_index", "save_index"]

FORMAT = 1
MANIFEST = "manifest.json"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Any) -> None:
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


def _shard_file(shard: Shard) -> str:
    digest = hashlib.sha1(shard.id.camera_id.encode()).hexdigest()[:12]
    return f"shard-{digest}-{shard.id.bucket}-v{shard.version}.npz"


def _shard_arrays(shard: Shard) -> dict[str, np.ndarray]:
    counts = np.bincount(shard.feature_frame, minlength=len(shard)).astype(np.int64)
    arrays = {
        "timestamps": shard.timestamps,
        "sequences": np.array([k.sequence for k in shard.keys], dtype=np.int64),
        "globals": shard.globals,
        "feature_counts": counts,
        "rerank_counts": np.array([d.shape[0] for d in shard.rerank_descriptors], dtype=np.int64),
        "rerank_descriptors": np.concatenate(shard.rerank_descriptors)
        if shard.rerank_descriptors else np.zeros((0, shard.config.local_dim), np.float16),
        "rerank_keypoints": np.concatenate(shard.rerank_keypoints)
        if shard.rerank_keypoints else np.zeros((0, 2), np.float32),
        "image_sizes": np.array(shard.image_sizes, dtype=np.int64).reshape(-1, 2),
    }
    raw = shard.raw_descriptors()
    if raw is not None:
        arrays["descriptors"] = raw
    else:
        arrays["index_blob"] = backend.serialize(shard.index)
    return arrays


def save_index(index: RollingIndex, directory: Path, metadata: dict[str, Any]) -> None:
    """Snapshot ``index`` into ``directory`` (created if needed) with JSON-serialisable ``metadata``.

    Raises:
        SnapshotError: the snapshot could not be written (the previous one stays valid).
    """
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
                prev = index.saved_files.get(shard.id)
                name = _shard_file(shard)
                if prev is None or prev[0] != shard.version or not (directory / prev[1]).exists():
                    arrays = _shard_arrays(shard)
                    _atomic_write(directory / name, lambda fh, a=arrays: np.savez(fh, **a))
                else:
                    name = prev[1]
                written[shard.id] = (shard.version, name)
                entries.append({"camera_id": shard.id.camera_id, "bucket": shard.id.bucket, "file": name})
            template_name = index.saved_template
            if index.template is not None and template_name is None:
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
            index.saved_files = written
            index.saved_template = template_name
        keep = {MANIFEST, *(e["file"] for e in entries)} | ({template_name} if template_name else set())
        for path in directory.iterdir():
            if path.name not in keep and (path.name.startswith(("shard-", "template-", ".tmp-"))):
                with contextlib.suppress(OSError):
                    path.unlink()
    except SnapshotError:
        raise
    except OSError as exc:
        raise SnapshotError(f"could not write snapshot to {directory}: {exc}") from exc


def load_index(directory: Path, config: IndexConfig | None = None) -> tuple[RollingIndex, dict[str, Any]]:
    """Load the snapshot in ``directory``.

    Args:
        directory: a directory written by :func:`save_index`.
        config: optional config to use instead of the saved one; dimensions must match.

    Returns:
        ``(index, metadata)``.

    Raises:
        SnapshotError: missing or unreadable manifest or shard file, or a dimension mismatch.
    """
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
    index = RollingIndex(cfg)
    try:
        template = None
        if manifest["template"]:
            template = backend.deserialize(np.fromfile(directory / manifest["template"], dtype=np.uint8))
            index.set_template(template)
        saved_files: dict[ShardId, tuple[int, str]] = {}
        for entry in manifest["shards"]:
            sid = ShardId(entry["camera_id"], int(entry["bucket"]))
            with np.load(directory / entry["file"]) as data:
                shard = _restore_shard(sid, cfg, template, {k: data[k] for k in data.files})
            # keep the saved version so the next change gets a new file name, never the referenced one
            shard.version = int(entry["file"].rsplit("-v", 1)[1].split(".")[0])
            index.attach(shard)
            saved_files[sid] = (shard.version, entry["file"])
    except (OSError, KeyError, ValueError) as exc:
        raise SnapshotError(f"corrupt snapshot in {directory}: {exc}") from exc
    index.saved_files = saved_files
    index.saved_template = manifest["template"]
    return index, dict(manifest["metadata"])


def _restore_shard(sid: ShardId, cfg: IndexConfig, template: Any, data: dict[str, np.ndarray]) -> Shard:
    shard = new_shard(sid, cfg, None)
    if "index_blob" in data:
        shard.index = backend.deserialize(data["index_blob"])
        shard.num_features = int(shard.index.ntotal)
    elif data["descriptors"].shape[0]:
        shard.index.add(np.ascontiguousarray(data["descriptors"], dtype=np.float32))
        shard.num_features = int(data["descriptors"].shape[0])
    if template is not None and "descriptors" in data:
        shard.compress(template)
    counts = data["feature_counts"]
    shard._feature_frame = [np.repeat(np.arange(len(counts), dtype=np.int64), counts)]
    shard.keys = [
        FrameKey(sid.camera_id, float(ts), int(seq))
        for ts, seq in zip(data["timestamps"], data["sequences"], strict=True)
    ]
    shard._globals = list(data["globals"].astype(np.float32))
    bounds = np.cumsum(data["rerank_counts"])[:-1]
    shard.rerank_descriptors = list(np.split(data["rerank_descriptors"], bounds))
    shard.rerank_keypoints = list(np.split(data["rerank_keypoints"].astype(np.float32), bounds))
    shard.image_sizes = [(int(h), int(w)) for h, w in data["image_sizes"]]
    return shard
