"""Secrets masked out of anything printed or logged (``--print-settings``, the settings dump of the worker)."""

from __future__ import annotations

from typing import Any

__all__ = ["MASK", "redact_secrets"]

_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "api_key", "apikey", "private_key")
MASK = "**********"


def redact_secrets(value: Any) -> Any:
    """``value`` with every mapping entry whose key names a secret replaced by :data:`MASK` (recursively through
    mappings and lists; ``None`` values stay ``None``)."""
    if isinstance(value, dict):
        return {k: MASK if any(w in str(k).lower() for w in _SECRET_WORDS) and v is not None else redact_secrets(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    return value
