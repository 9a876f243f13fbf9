"""Helpers shared by the benchmarks: machine-readable output and percentiles."""

from __future__ import annotations

import dataclasses
import json
import platform
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def field_overrides(cls: type, pairs: Sequence[str]) -> dict[str, Any]:
    """``FIELD=VALUE`` strings as keyword arguments of the dataclass ``cls``, each value converted to the type of
    the field's default (``none`` gives None; a field without a default keeps the string).

    Raises:
        SystemExit: a pair without ``=`` or a name that is not a field of ``cls``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or name not in fields:
            raise SystemExit(f"{pair!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        default = fields[name].default
        if text.lower() == "none":
            out[name] = None
        elif isinstance(default, bool):
            out[name] = text.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)):
            out[name] = type(default)(float(text)) if isinstance(default, int) else float(text)
        else:
            out[name] = text
    return out


def emit(record: dict[str, Any]) -> None:
    """Print one JSON object per line (the machine-readable result) and flush."""
    print(json.dumps(record, sort_keys=True, default=float), flush=True)


def progress(message: str) -> None:
    """Human progress on stderr (keeps stdout machine-readable)."""
    print(message, file=sys.stderr, flush=True)


def percentiles(samples_s: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50_ms": ..., ...}`` of samples given in seconds."""
    arr = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {f"p{p}_ms": round(float(np.percentile(arr, p)), 3) for p in points} if arr.size else {}


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    return {
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
    }
