"""Process-wide settings of an ``l2g-stream`` process, applied explicitly by its entry points (never on import).

``OMP_WAIT_POLICY=PASSIVE`` (unless the environment already chooses): a worker runs OpenMP code from several threads
(FAISS in the query thread, torch in the merge and ingest threads), and libgomp's default of spinning idle thread
teams steals the cores from the team that has work. Measured on 2 cores: stage 1 went from ~300 to ~25 ms and the
L2G stage 2 from ~1000 to ~190 ms. libgomp reads the variable once, when torch or FAISS first loads it, so
:func:`configure_process` must run before either is imported: ``l2g-stream``'s ``main`` (``stream.cli``, which
imports neither at module level) calls it first thing, and so do the benchmarks that run a worker. The FAISS
settings are applied by ``l2g_core.index.backend.configure_faiss`` (``Worker.open``).
"""

from __future__ import annotations

import logging
import os
import sys

from stream import lognoise

__all__ = ["OPENMP_MODULES", "configure_process"]

LOG = logging.getLogger(__name__)

OPENMP_MODULES = ("torch", "faiss")
"""Modules that load the OpenMP runtime when imported."""


def configure_process() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already sets it (see the module docstring), and
    demote kafka-python's lines that read like errors but are not (:mod:`stream.lognoise`).

    Returns:
        Whether the setting can still take effect: False when an OpenMP module was already imported (the variable
        is set anyway, for child processes, and a warning is logged).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    lognoise.install()
    loaded = [m for m in OPENMP_MODULES if m in sys.modules]
    if loaded:
        LOG.warning("configure_process() ran after %s loaded OpenMP: OMP_WAIT_POLICY=%s may not apply",
                    " and ".join(loaded), os.environ["OMP_WAIT_POLICY"])
        return False
    return True
