"""Exceptions raised by :mod:`stream`.

Every error derives from :class:`StreamError`, so callers can catch the whole package at once::

    StreamError
    ├── ConfigurationError  (also ValueError)   settings are invalid or inconsistent
    ├── BrokerError         (also RuntimeError) the broker cannot be reached, started or written to
    ├── ExtractorCrashError (also RuntimeError) the extractor failed on a batch other than by rejecting its input
    └── BadInputError       (also ValueError)   one message cannot be processed; it goes to the DLQ
        ├── SchemaError                         the payload violates its schema (or is not JSON)
        ├── MessageTooLargeError                the message exceeds the configured size limit
        ├── ReferenceError_                     a payload reference cannot be resolved or is not allowed
        ├── VideoDecodeError                    the video segment is corrupt, truncated or unsupported
        └── ImageDecodeError                    the query image cannot be decoded

:class:`BadInputError` carries a short machine-readable ``reason`` (the ``reason`` label of
``l2g_dead_letters_total``) next to the human-readable message. What the worker does with each kind is decided in
one place, :mod:`stream.failures`.
"""

from __future__ import annotations

__all__ = [
    "BadInputError",
    "BrokerError",
    "ConfigurationError",
    "ExtractorCrashError",
    "ImageDecodeError",
    "MessageTooLargeError",
    "ReferenceError_",
    "SchemaError",
    "StreamError",
    "VideoDecodeError",
]


class StreamError(Exception):
    """Root of every error raised by the stream runtime."""


class ConfigurationError(StreamError, ValueError):
    """Settings are invalid or inconsistent (for example a snapshot built by another extractor)."""


class BrokerError(StreamError, RuntimeError):
    """The broker cannot be reached, started, or written to."""


class ExtractorCrashError(StreamError, RuntimeError):
    """The extractor raised something other than ``plugins.ExtractorInputError`` (a bug, or its runtime failed:
    CUDA out of memory, a broken weights file). Never bad input: nothing is dead-lettered for it
    (see :mod:`stream.failures`).

    Args:
        message: what failed.
        extractor: the extractor's name.
    """

    def __init__(self, message: str, extractor: str) -> None:
        super().__init__(message)
        self.extractor = extractor


class BadInputError(StreamError, ValueError):
    """One input message cannot be processed; the worker dead-letters it and goes on.

    Args:
        message: human-readable explanation.
        reason: short machine-readable reason, used as a metric label and in the dead letter.
    """

    default_reason = "bad_input"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or self.default_reason


class SchemaError(BadInputError):
    """The payload is not valid JSON or violates the message schema."""

    default_reason = "schema_violation"


class MessageTooLargeError(BadInputError):
    """The message is larger than the configured limit."""

    default_reason = "oversized"


class ReferenceError_(BadInputError):
    """A payload reference (claim check) cannot be resolved, is too large, or points outside allowed roots."""

    default_reason = "bad_reference"


class VideoDecodeError(BadInputError):
    """A video segment is corrupt, truncated, empty, or uses an unsupported codec or container."""

    default_reason = "corrupt_video"


class ImageDecodeError(BadInputError):
    """A query image cannot be decoded (not JPEG/PNG, corrupt, empty, or too large)."""

    default_reason = "undecodable_image"
