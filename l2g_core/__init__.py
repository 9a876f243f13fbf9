"""l2g_core: Local-to-Global retrieval over a rolling local-feature index (pure algorithm library)."""

from l2g_core.errors import ConfigError, IndexStateError, L2GError, ShapeError, SnapshotError
from l2g_core.types import FrameFeatures, FrameKey, Hit, l2_normalize

__all__ = [
    "ConfigError",
    "FrameFeatures",
    "FrameKey",
    "Hit",
    "IndexStateError",
    "L2GError",
    "ShapeError",
    "SnapshotError",
    "l2_normalize",
]
