"""Helpers of the fault tests (tests/integration/test_fault_*.py): worker processes, metrics, snapshot audits."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from l2g_core.index.persistence import load_index
from stream.settings import Settings

REPO = Path(__file__).resolve().parents[2]
_SAMPLE = re.compile(r"^(l2g_[a-z_]+)(\{[^}]*\})? ([0-9.e+-]+|NaN|[+-]Inf)$")


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` summed per metric name (labels merged); empty when the endpoint does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def scrape_labelled(url: str, name: str) -> dict[str, float]:
    """Samples of one metric keyed by their label string."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            out[m.group(2) or ""] = float(m.group(3))
    return out


def write_config(settings: Settings, path: Path) -> Path:
    data = settings.as_dict()
    data.pop("runtime")
    path.write_text(yaml.safe_dump(data))
    return path


def start_worker(config: Path, log: Path, worker_id: str, **hooks: str) -> subprocess.Popen[bytes]:
    """``l2g-stream worker --config`` in a child process through :mod:`tests.reliability.worker_harness`."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "L2G_RUNTIME__WORKER_ID": worker_id, "OMP_NUM_THREADS": "1",
           **hooks}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.reliability.worker_harness", "worker", "--config",
                                 str(config)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_until(cond: Callable[[], Any], timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None,
               log: Path | None = None, poll_s: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
            raise AssertionError(f"worker exited with {proc.returncode} while waiting for {what}:\n{tail}")
        value = cond()
        if value:
            return value
        time.sleep(poll_s)
    tail = log.read_text()[-4000:] if log is not None and log.exists() else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tail}")


def kill9(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    """SIGTERM (graceful: final snapshot and commit), SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            kill9(proc)
    return proc.returncode


def markers(path: Path) -> list[str]:
    try:
        return [line.split(" ", 1)[1] for line in path.read_text().splitlines() if " " in line]
    except FileNotFoundError:
        return []


def snapshot_keys(snapshot_dir: Path) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Every frame key in every partition snapshot under ``snapshot_dir`` (each must load), and offsets per dir."""
    keys: list[tuple[str, int]] = []
    offsets: dict[str, int] = {}
    for part_dir in sorted(snapshot_dir.glob("*/*")):
        if not (part_dir / "manifest.json").exists():
            continue
        index, meta, _ = load_index(part_dir)
        keys += [(k.camera_id, int(k.sequence)) for shard in index.shards() for k in shard.keys]
        offsets[part_dir.name] = int(meta["offset"])
    return keys, offsets


def temporaries(snapshot_dir: Path) -> list[Path]:
    return sorted(snapshot_dir.glob("*/*/.tmp-*"))
