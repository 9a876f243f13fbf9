"""GPU check (issue 16): the GPU tests and GPU-beside-CPU figures in one run of at most about 5 minutes.

    .venv/bin/python -m bench.gpu_check [--quick]

Prints one JSON line per figure (``{"figure": ..., "cpu": ..., "cuda": ...}``) and a last summary line. On a machine
without CUDA it prints ``{"gpu_check": "skipped: no CUDA"}`` and exits 0, so CI can run it anywhere.

Figures: the GPU tests (``pytest -m gpu``); xfeat frames/s at 640x360 for batch 1, 8, 32; SMACOF at k=700 (ms);
stage-1 flat search at 100k frames (64 features each) on a faiss GPU index vs the CPU index (ms per query of 1000
descriptors). Not here yet: the end-to-end l2g query latency at 100k frames (bench/bench_core_scale.py with
``IndexConfig(device="cuda")``) and the ingest rate of one worker on the real broker (bench/bench_stream.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from l2g_core.index import backend
from l2g_core.timing import stage_clock


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _timed(fn: Any, device: str, repeats: int) -> float:
    """Median seconds of ``fn()`` (after one warm-up), synchronising ``device`` at each timing point."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = stage_clock(device)
        fn()
        times.append(stage_clock(device) - t0)
    return float(np.median(times))


def gpu_tests(timeout_s: float) -> None:
    """``pytest -m gpu`` in a subprocess: its outcome line."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    _emit(figure="gpu_tests", rc=proc.returncode, summary=tail)


def extractor_fps(repeats: int) -> None:
    """xfeat frames/s at 640x360, batch 1, 8, 32, CPU beside CUDA."""
    from plugins import get_extractor

    frames = np.random.default_rng(0).integers(0, 255, (32, 360, 640, 3), dtype=np.uint8)
    for batch in (1, 8, 32):
        row: dict[str, Any] = {"figure": "xfeat_fps_640x360", "batch": batch}
        for device in ("cpu", "cuda"):
            extractor = get_extractor("xfeat", device=device)
            extractor.setup()
            seconds = _timed(lambda e=extractor, b=frames[:batch]: e.extract(b), device,
                             repeats if device == "cuda" else 1)
            row[device] = round(batch / seconds, 1)
            extractor.close()
        _emit(**row)


def smacof_ms(repeats: int) -> None:
    """SMACOF at k=700 (ms), CPU beside CUDA."""
    from l2g_core.rerank.smacof import smacof

    x = torch.randn(700, 8, generator=torch.Generator().manual_seed(0))
    delta_cpu = torch.cdist(x, x)
    row: dict[str, Any] = {"figure": "smacof_k700_ms"}
    for device in ("cpu", "cuda"):
        delta = delta_cpu.to(device)
        row[device] = round(1e3 * _timed(lambda d=delta: smacof(d, dim=8), device, repeats), 1)
    _emit(**row)


def stage1_ms(frames: int, repeats: int) -> None:
    """Flat inner-product search of 1000 query descriptors over ``frames`` x 64 features (ms), CPU beside GPU."""
    from l2g_core.config import IndexConfig

    backend.configure_faiss()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((frames * 64, 64), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = data[rng.choice(len(data), 1000, replace=False)]
    row: dict[str, Any] = {"figure": "stage1_flat_ms", "frames": frames, "features": len(data)}
    for device in ("cpu", "cuda"):
        index = backend.to_device(backend.new_flat(64), IndexConfig(local_dim=64, global_dim=64, device=device))
        index.add(data)
        row[device] = round(1e3 * _timed(lambda i=index: i.search(queries, 10), device, repeats), 1)
    _emit(**row)


def main(argv: list[str] | None = None) -> int:
    """Run every check that fits; exit 0 without CUDA (one ``skipped`` line)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and 10k frames (smoke run)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        _emit(gpu_check="skipped: no CUDA")
        return 0
    started = time.perf_counter()
    repeats = 3 if args.quick else 10
    _emit(device=torch.cuda.get_device_name(0), faiss_gpu=backend.gpu_available())
    gpu_tests(timeout_s=120)
    extractor_fps(repeats)
    smacof_ms(repeats)
    if backend.gpu_available():
        stage1_ms(10_000 if args.quick else 100_000, repeats)
    else:
        _emit(figure="stage1_flat_ms", skipped="faiss without GPU support (install the `gpu` extra)")
    _emit(gpu_check="done", seconds=round(time.perf_counter() - started, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
