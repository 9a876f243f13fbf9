"""Process-wide settings are applied by the entry points, never by an import (``stream.runtime``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str, **env: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter without ``OMP_WAIT_POLICY`` (plus ``env``); returns its last JSON line."""
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.slow  # imports torch and faiss in a fresh interpreter
def test_importing_stream_changes_no_environment_variable() -> None:
    out = _python(
        "import json, os, sys\n"
        "before = dict(os.environ)\n"
        "import stream, stream.cli, stream.runtime, stream.formatting\n"
        "light = {'same': dict(os.environ) == before, 'policy': os.environ.get('OMP_WAIT_POLICY'),\n"
        "         'openmp': sorted(m for m in ('torch', 'faiss') if m in sys.modules)}\n"
        "import stream.worker\n"
        "print(json.dumps({**light, 'policy_after_worker': os.environ.get('OMP_WAIT_POLICY')}))\n")
    # stream.cli loads neither torch nor faiss, so l2g-stream's main() sets the policy before OpenMP starts
    assert out == {"same": True, "policy": None, "openmp": [], "policy_after_worker": None}


def test_the_cli_entry_point_sets_the_wait_policy_before_openmp_loads() -> None:
    code = (
        "import json, os, sys, contextlib, io\n"
        "import stream.cli\n"
        "loaded = sorted(m for m in ('torch', 'faiss') if m in sys.modules)\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    status = stream.cli.main(['worker', '--print-settings'])\n"
        "print(json.dumps({'status': status, 'loaded_before_main': loaded,\n"
        "                  'policy': os.environ.get('OMP_WAIT_POLICY')}))\n")
    assert _python(code) == {"status": 0, "loaded_before_main": [], "policy": "PASSIVE"}
    # an explicit choice in the environment wins
    assert _python(code, OMP_WAIT_POLICY="ACTIVE")["policy"] == "ACTIVE"


def test_configure_process_says_when_it_comes_too_late(caplog: pytest.LogCaptureFixture) -> None:
    out = _python("import json\nfrom stream.runtime import configure_process\n"
                  "print(json.dumps({'in_time': configure_process()}))")
    assert out == {"in_time": True}
    import torch  # noqa: F401  # loaded by this test process already (tests/conftest.py)

    from stream.runtime import configure_process

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("OMP_WAIT_POLICY", raising=False)
        assert configure_process() is False
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # still set, for child processes
    assert "may not apply" in caplog.text
