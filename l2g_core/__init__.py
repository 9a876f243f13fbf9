"""l2g_core: Local-to-Global retrieval over a rolling local-feature index (pure algorithm library).

No Kafka, PyAV or Prometheus here: numpy, faiss, torch and OpenCV only.

The search is a typed two-stage protocol (see :mod:`l2g_core.retrieval`): a :class:`SearchPlan` built once from
``(mode, k, config)``; :func:`stage1` per index; :func:`merge_candidates` of the indexes' lists; :func:`stage2`
once. :func:`search` runs all of it over a sequence of indexes and :class:`Retriever` over one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names below, imported on first use (``import l2g_core`` stays light: no faiss, no torch)
    from l2g_core.candidates import Candidates, Coverage
    from l2g_core.config import IndexConfig, RetrievalConfig
    from l2g_core.errors import ConfigError, IndexStateError, L2GError, ShapeError, SnapshotError
    from l2g_core.index.rolling import IndexStats, RollingIndex
    from l2g_core.plan import MAX_K, MODES, Mode, SearchPlan, Stage, Transport
    from l2g_core.prepared import PreparedQuery, prepare_query
    from l2g_core.retrieval import Ranking, Retriever, SearchResult, merge_candidates, search, stage2
    from l2g_core.shortlist import stage1
    from l2g_core.types import FrameFeatures, FrameKey, FrameSource, Hit, l2_normalize

_HOME = {
    "Candidates": "candidates", "Coverage": "candidates",
    "IndexConfig": "config", "RetrievalConfig": "config",
    "ConfigError": "errors", "IndexStateError": "errors", "L2GError": "errors", "ShapeError": "errors",
    "SnapshotError": "errors",
    "IndexStats": "index.rolling", "RollingIndex": "index.rolling",
    "MAX_K": "plan", "MODES": "plan", "Mode": "plan", "SearchPlan": "plan", "Stage": "plan", "Transport": "plan",
    "PreparedQuery": "prepared", "prepare_query": "prepared",
    "Ranking": "retrieval", "Retriever": "retrieval", "SearchResult": "retrieval", "merge_candidates": "retrieval",
    "search": "retrieval", "stage2": "retrieval",
    "stage1": "shortlist",
    "FrameFeatures": "types", "FrameKey": "types", "FrameSource": "types", "Hit": "types", "l2_normalize": "types",
}


def __getattr__(name: str) -> object:
    """Import the module that defines ``name`` on first use."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'l2g_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"l2g_core.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "MAX_K",
    "MODES",
    "Candidates",
    "ConfigError",
    "Coverage",
    "FrameFeatures",
    "FrameKey",
    "FrameSource",
    "Hit",
    "IndexConfig",
    "IndexStateError",
    "IndexStats",
    "L2GError",
    "Mode",
    "PreparedQuery",
    "Ranking",
    "RetrievalConfig",
    "Retriever",
    "RollingIndex",
    "SearchPlan",
    "SearchResult",
    "ShapeError",
    "SnapshotError",
    "Stage",
    "Transport",
    "l2_normalize",
    "merge_candidates",
    "prepare_query",
    "search",
    "stage1",
    "stage2",
]

assert set(_HOME) == set(__all__), "every public name has a home module"
