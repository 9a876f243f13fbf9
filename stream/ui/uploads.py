"""What an upload must be before it becomes a query: an image of acceptable size, and sane fields.

The page sends the image as the raw request body (``POST /api/queries``, no multipart) and the other fields as
URL parameters: ``k``, ``mode``, ``cameras`` (comma-separated), ``time_from`` and ``time_to`` (Unix seconds),
``timeout`` (seconds). Every refusal is a :class:`~stream.errors.BadInputError` whose message is shown on the page
as is, and whose ``reason`` labels the dead letter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from l2g_core import MODES
from stream.errors import ImageDecodeError, MessageTooLargeError, SchemaError
from stream.ui.sessions import QueryParams

__all__ = ["check_image", "check_size", "parse_params"]

MIN_UPLOAD_BYTES = 32
"""Nothing shorter can be a JPEG or PNG with pixels in it; refused before decoding."""


def check_size(declared: int | None, limit: int) -> int:
    """The upload's length, checked before it is read.

    Raises:
        SchemaError: no ``Content-Length`` (reason ``missing_length``).
        MessageTooLargeError: over ``limit`` (reason ``image_too_large``).
        ImageDecodeError: under :data:`MIN_UPLOAD_BYTES` (reason ``image_too_small``; ``empty_image`` when 0).
    """
    if declared is None or declared < 0:
        raise SchemaError("the upload has no Content-Length", reason="missing_length")
    if declared > limit:
        raise MessageTooLargeError(f"the image is {declared:,} bytes; at most {limit:,} bytes are accepted "
                                   "(ui.max_upload_bytes)", reason="image_too_large")
    if declared == 0:
        raise ImageDecodeError("the upload is empty: choose or paste a JPEG or PNG image", reason="empty_image")
    if declared < MIN_UPLOAD_BYTES:
        raise ImageDecodeError(f"the upload is only {declared} bytes: too small to be an image",
                               reason="image_too_small")
    return declared


def check_image(data: bytes, *, max_side: int, max_pixels: int) -> str:
    """Decode ``data`` as the worker will (:func:`stream.decode.decode_image`) and return its content type.

    Raises:
        ImageDecodeError: not JPEG or PNG, corrupt, too small (under 8 pixels a side) or too many pixels.
    """
    from stream.decode import decode_image

    try:
        decode_image(data, max_side=max_side, max_pixels=max_pixels)
    except ImageDecodeError as exc:
        hint = {"unsupported_image": ": upload a JPEG or PNG image",
                "image_too_small": ": the query needs at least 8x8 pixels"}.get(exc.reason, "")
        raise ImageDecodeError(f"not accepted as a query image: {exc}{hint}", reason=exc.reason) from None
    return "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"


def _one(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = [v.strip() for v in params.get(name, []) if v.strip()]
    if len(values) > 1:
        raise SchemaError(f"{name} given {len(values)} times", reason="invalid_field")
    return values[0] if values else None


def _number(params: Mapping[str, Sequence[str]], name: str) -> float | None:
    text = _one(params, name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SchemaError(f"{name} must be a number, got {text[:40]!r}", reason="invalid_field") from None
    if not math.isfinite(value):
        raise SchemaError(f"{name} must be finite", reason="invalid_field")
    return value


def parse_params(params: Mapping[str, Sequence[str]], *, default_timeout_s: float,
                 max_timeout_s: float) -> QueryParams:
    """The query fields from the URL parameters.

    Raises:
        SchemaError: a field is malformed or out of range (reason ``invalid_field``).
    """
    k_value = _number(params, "k")
    if k_value is not None and (k_value != int(k_value) or not 1 <= k_value <= 1000):
        raise SchemaError(f"k must be a whole number from 1 to 1000, got {k_value:g}", reason="invalid_field")
    mode = _one(params, "mode")
    if mode is not None and mode not in MODES:
        raise SchemaError(f"mode must be one of {', '.join(MODES)}, got {mode[:40]!r}", reason="invalid_field")
    cameras_text = _one(params, "cameras")
    cameras = [c.strip() for c in cameras_text.split(",") if c.strip()] if cameras_text else None
    if cameras is not None and any(len(c) > 256 for c in cameras):
        raise SchemaError("a camera id is longer than 256 characters", reason="invalid_field")
    time_from, time_to = _number(params, "time_from"), _number(params, "time_to")
    if time_from is not None and time_to is not None and time_from > time_to:
        raise SchemaError("the time range ends before it starts", reason="invalid_field")
    timeout = _number(params, "timeout")
    if timeout is not None and not 0 < timeout <= max_timeout_s:
        raise SchemaError(f"timeout must be above 0 and at most {max_timeout_s:g} s", reason="invalid_field")
    return QueryParams(k=int(k_value) if k_value is not None else None, mode=mode, cameras=cameras or None,
                       time_from=time_from, time_to=time_to, timeout_s=timeout or default_timeout_s)
