"""Guards for public entry points: shapes, dtypes and finiteness, checked once at the boundary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from l2g_core.errors import ShapeError

__all__ = ["check_array"]


def check_array(
    name: str,
    x: object,
    shape: Sequence[int | str | None],
    dtype: npt.DTypeLike | Sequence[npt.DTypeLike] | None = None,
    *,
    finite: bool = False,
    dims: dict[str, int] | None = None,
) -> np.ndarray:
    """Validate an array argument and return it unchanged.

    Args:
        name: argument name used in error messages.
        x: the value to check; must already be a ``numpy.ndarray``.
        shape: expected shape; an ``int`` is a fixed size, a ``str`` names a dimension that must agree
            across calls sharing ``dims``, ``None`` is any size.
        dtype: accepted dtype or dtypes (``None`` accepts any).
        finite: reject NaN and infinity.
        dims: named dimension sizes seen so far; filled in by this call.

    Returns:
        ``x`` itself.

    Raises:
        ShapeError: on any mismatch, naming the argument.
    """
    if not isinstance(x, np.ndarray):
        raise ShapeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.ndim != len(shape):
        raise ShapeError(f"{name} must have {len(shape)} dimensions {tuple(shape)}, got shape {x.shape}")
    dims = {} if dims is None else dims
    for axis, (want, got) in enumerate(zip(shape, x.shape, strict=True)):
        if want is None:
            continue
        if isinstance(want, int):
            if got != want:
                raise ShapeError(f"{name} axis {axis} must be {want}, got shape {x.shape}")
            continue
        seen = dims.setdefault(want, got)
        if seen != got:
            raise ShapeError(f"{name} axis {axis} ({want}) must be {seen}, got shape {x.shape}")
    if dtype is not None:
        wanted: list[Any] = list(dtype) if isinstance(dtype, (list, tuple)) else [dtype]
        allowed = [np.dtype(d) for d in wanted]
        if x.dtype not in allowed:
            names = ", ".join(str(d) for d in allowed)
            raise ShapeError(f"{name} must have dtype {names}, got {x.dtype}")
    if finite and x.size and not np.isfinite(x).all():
        raise ShapeError(f"{name} contains NaN or infinite values")
    return x
