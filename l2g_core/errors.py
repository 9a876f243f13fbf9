"""Exceptions raised by :mod:`l2g_core`.

Every error derives from :class:`L2GError`, so callers can catch the whole package at once::

    L2GError
    ├── ShapeError        (also ValueError)  an array has the wrong shape, dtype or non-finite values
    ├── ConfigError       (also ValueError)  a configuration value is out of range or inconsistent
    ├── IndexStateError   (also RuntimeError) the index cannot do this now (e.g. dimension mismatch)
    └── SnapshotError     (also OSError)     a snapshot could not be written or read back
"""

from __future__ import annotations

__all__ = ["ConfigError", "IndexStateError", "L2GError", "ShapeError", "SnapshotError"]


class L2GError(Exception):
    """Root of every error raised by l2g_core."""


class ShapeError(L2GError, ValueError):
    """An array argument has the wrong shape, dtype or contains non-finite values."""


class ConfigError(L2GError, ValueError):
    """A configuration value is invalid."""


class IndexStateError(L2GError, RuntimeError):
    """The index is in a state that does not allow the operation."""


class SnapshotError(L2GError, OSError):
    """A snapshot could not be written or loaded."""
