"""``make bench`` (bench.run_all) names modules that exist and flags that their parsers accept."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from bench import run_all


@pytest.mark.slow
@pytest.mark.parametrize("entry", run_all.BENCHES, ids=[b[0] for b in run_all.BENCHES])
def test_every_benchmark_exists_and_takes_its_flags(entry: tuple[str, str, list[str], list[str], bool]) -> None:
    _, module, full, quick, _ = entry
    assert importlib.util.find_spec(module) is not None, module
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    for flag in (a for a in full + quick if a.startswith("--")):
        assert flag in out, f"{module} has no {flag}"


def test_unknown_benchmark_is_refused() -> None:
    with pytest.raises(SystemExit):
        run_all.main(["--only", "nope"])
