"""Shared pytest configuration: thread counts, seeded data, the ../shared/data location."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _configure_threads() -> None:
    # Two cores: keep torch and faiss from oversubscribing them while pytest runs.
    import faiss
    import torch

    from l2g_core.index.backend import configure_faiss

    torch.set_num_threads(2)
    faiss.omp_set_num_threads(2)
    configure_faiss()  # the process-wide FAISS settings every entry point applies (Worker.open, benchmarks)


_configure_threads()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder; skips the test cleanly when it is absent (fresh machine)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
