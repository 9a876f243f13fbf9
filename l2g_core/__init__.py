"""l2g_core: Local-to-Global retrieval over a rolling local-feature index (pure algorithm library).

No Kafka, PyAV or Prometheus here: numpy, faiss, torch and OpenCV only.
"""

from l2g_core.candidates import Candidates, Coverage
from l2g_core.config import MODES, IndexConfig, Mode, RetrievalConfig
from l2g_core.errors import ConfigError, IndexStateError, L2GError, ShapeError, SnapshotError
from l2g_core.index.rolling import IndexStats, RollingIndex
from l2g_core.retrieval import PreparedQuery, Retriever, SearchResult, prepare_query, rerank
from l2g_core.types import FrameFeatures, FrameKey, Hit, l2_normalize

__all__ = [
    "MODES",
    "Candidates",
    "ConfigError",
    "Coverage",
    "FrameFeatures",
    "FrameKey",
    "Hit",
    "IndexConfig",
    "IndexStateError",
    "IndexStats",
    "L2GError",
    "Mode",
    "PreparedQuery",
    "RetrievalConfig",
    "Retriever",
    "RollingIndex",
    "SearchResult",
    "ShapeError",
    "SnapshotError",
    "l2_normalize",
    "prepare_query",
    "rerank",
]
