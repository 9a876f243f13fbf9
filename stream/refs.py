"""Claim-check references: payloads too large for one message live in a file that the message points to.

A reference is a ``file://`` URI or a plain absolute path. A worker reads it only when it resolves (symbolic links
followed) inside one of ``storage.allowed_ref_roots`` and is at most ``storage.max_ref_bytes``; anything else is a
:class:`~stream.errors.ReferenceError_`, which dead-letters the message.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import unquote, urlparse

from stream.errors import ReferenceError_
from stream.settings import StorageSettings

__all__ = ["resolve_ref", "write_blob"]


def _ref_path(ref: str) -> Path:
    if "\x00" in ref:
        raise ReferenceError_("reference contains a NUL byte", reason="ref_not_allowed")
    if ref.startswith("file:"):
        try:
            parsed = urlparse(ref)
        except ValueError as exc:  # e.g. "Invalid IPv6 URL"
            raise ReferenceError_(f"malformed reference {ref[:200]!r}: {exc}", reason="ref_not_allowed") from exc
        if parsed.netloc not in ("", "localhost"):
            raise ReferenceError_(f"reference {ref!r} names a remote host", reason="ref_not_allowed")
        path = unquote(parsed.path)
        if "\x00" in path:
            raise ReferenceError_("reference contains a NUL byte", reason="ref_not_allowed")
        return Path(path)
    if "://" in ref:
        raise ReferenceError_(f"unsupported reference scheme in {ref!r} (only file:// is read)",
                              reason="ref_not_allowed")
    return Path(ref)


def resolve_ref(ref: str, storage: StorageSettings) -> bytes:
    """Read the payload a claim-check reference points to.

    Args:
        ref: ``file:///abs/path`` or ``/abs/path``.
        storage: allowed roots and the size limit.

    Returns:
        The file's bytes.

    Raises:
        ReferenceError_: not allowed (``ref_not_allowed``), missing (``ref_missing``) or too large
            (``ref_too_large``).
    """
    path = _ref_path(ref)
    if not path.is_absolute():
        raise ReferenceError_(f"reference {ref!r} is not an absolute path", reason="ref_not_allowed")
    if not storage.allowed_ref_roots:
        raise ReferenceError_("references are disabled (storage.allowed_ref_roots is empty)", reason="ref_not_allowed")
    try:
        real = Path(os.path.realpath(path))
    except (ValueError, OSError) as exc:
        raise ReferenceError_(f"reference {ref[:200]!r} cannot be resolved: {exc}", reason="ref_not_allowed") from exc
    roots = [Path(os.path.realpath(r)) for r in storage.allowed_ref_roots]
    if not any(real == root or root in real.parents for root in roots):
        raise ReferenceError_(f"reference {ref!r} is outside the allowed roots", reason="ref_not_allowed")
    try:
        size = real.stat().st_size
    except OSError as exc:
        raise ReferenceError_(f"reference {ref!r} cannot be read: {exc.strerror}", reason="ref_missing") from exc
    if not real.is_file():
        raise ReferenceError_(f"reference {ref!r} is not a regular file", reason="ref_missing")
    if size > storage.max_ref_bytes:
        raise ReferenceError_(f"reference {ref!r} holds {size} bytes, over the {storage.max_ref_bytes}-byte limit",
                              reason="ref_too_large")
    try:
        return real.read_bytes()
    except OSError as exc:
        raise ReferenceError_(f"reference {ref!r} cannot be read: {exc.strerror}", reason="ref_missing") from exc


def write_blob(data: bytes, blob_dir: Path, *, prefix: str = "blob", suffix: str = ".bin") -> str:
    """Write ``data`` atomically to a new file under ``blob_dir``; returns its ``file://`` URI."""
    blob_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in prefix)[:80]
    path = blob_dir / f"{safe}-{uuid.uuid4().hex[:12]}{suffix}"
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path.resolve().as_uri()
