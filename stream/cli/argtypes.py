"""The argument types of ``l2g-stream`` (times, positive numbers, ports): shared by the parser
(:mod:`stream.cli.args`) and the subcommand modules that add their own options, so that neither imports the other.
"""

from __future__ import annotations

import argparse
import math
import time
from datetime import UTC, datetime

__all__ = ["port_arg", "positive_float", "positive_int", "time_arg"]


def time_arg(text: str) -> float:
    """Unix seconds, an ISO 8601 time (UTC when no zone), or ``now`` / ``now-10m`` / ``-90s`` (relative)."""
    t = text.strip()
    if t.startswith(("now", "-")):
        rest = t[3:] if t.startswith("now") else t
        if not rest:
            return time.time()
        units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
        try:
            value = float(rest[:-1]) * units[rest[-1]] if rest[-1] in units else float(rest)
        except (ValueError, IndexError) as exc:
            raise argparse.ArgumentTypeError(f"bad relative time {text!r} (e.g. now-10m, -90s)") from exc
        return time.time() + value
    try:
        return float(t)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(t)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad time {text!r}: Unix seconds, ISO 8601 or now-10m") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port_arg(text: str) -> int:
    """A TCP port, 0 (pick a free one) to 65535."""
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from exc
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value
