"""Helpers shared by the benchmarks: machine-readable output and percentiles."""

from __future__ import annotations

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
