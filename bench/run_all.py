"""Run every benchmark in one go (``make bench``): one JSON object per line on stdout, progress on stderr.

Each benchmark runs in its own subprocess, one after the other (they would share the two cores otherwise and
measure each other), with the arguments below. A benchmark that fails is reported as a JSON line
``{"bench": "run_all", "module": ..., "returncode": ...}`` and the others still run; the exit status is non-zero
if any failed. The ones that need ``../shared/data`` (retrieval, approximation) are skipped with a JSON line when it
is absent.

Run: ``python -m bench.run_all [--only core_scale retrieval] [--quick]``. ``--quick`` shrinks every benchmark to a
few minutes in all (10k frames only, fewer queries and seconds): a smoke run, not the figures of the notes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import SHARED_DATA, emit, progress

# (name, module, full arguments, quick arguments, needs shared data)
BENCHES: tuple[tuple[str, str, list[str], list[str], bool], ...] = (
    ("core_scale", "bench.bench_core_scale", [], ["--sizes", "10000", "--queries", "5"], False),
    ("retrieval", "bench.bench_retrieval", [], ["--per-clip", "12", "--crops-per-clip", "2",
                                              "--frames-per-clip", "1", "--no-cache", "--datasets", "video"], True),
    ("approximation", "bench.bench_approximation", ["--variants", "exact", "default", "nprobe8:nprobe=8"],
     ["--fps", "1", "--per-clip", "40", "--crops-per-clip", "2", "--frames-per-clip", "1", "--no-cache",
      "--datasets", "video"], True),
    ("extractors", "bench.bench_extractors", [],
     ["--extractors", "xfeat", "rootsift", "--min-seconds", "1", "--min-batches", "1", "--batches", "1",
      "--sizes", "640x360", "--skip-correctness"], False),
    ("stream", "bench.bench_stream", [], ["--seconds", "10"], False),
    ("scaleout", "bench.bench_scaleout", [], ["--partitions", "2", "--frames", "2500", "--queries", "5"], False),
    ("reliability", "bench.bench_reliability", [],
     ["--seconds", "15", "--memory-seconds", "30", "--retention", "15"], False),
)


def main(argv: list[str] | None = None) -> int:
    names = [b[0] for b in BENCHES]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=names, default=names)
    parser.add_argument("--quick", action="store_true", help="a few minutes in all: smoke figures only")
    args = parser.parse_args(argv)
    failed = 0
    for name, module, full, quick, needs_data in BENCHES:
        if name not in args.only:
            continue
        if needs_data and not SHARED_DATA.is_dir():
            emit({"bench": "run_all", "module": module, "skipped": f"no shared data at {SHARED_DATA}"})
            continue
        cmd = [sys.executable, "-m", module, *(quick if args.quick else full)]
        progress(f"run_all: {' '.join(cmd[1:])}")
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, check=False).returncode  # stdout/stderr go straight through
        seconds = round(time.perf_counter() - t0, 1)
        progress(f"run_all: {name} finished in {seconds} s (exit {rc})")
        if rc != 0:
            failed += 1
            emit({"bench": "run_all", "module": module, "returncode": rc, "seconds": seconds})
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
