"""Query features ready for search: checked against the index, strongest first, unit norm."""

from __future__ import annotations

from dataclasses import dataclass, replace

from l2g_core.config import RetrievalConfig
from l2g_core.errors import ShapeError
from l2g_core.plan import VERIFY_QUERY_FEATURES
from l2g_core.types import FloatArray, FrameFeatures, l2_normalize

__all__ = ["PreparedQuery", "prepare_query"]


@dataclass(frozen=True)
class PreparedQuery:
    """Query features ready for search: unit descriptors, strongest first.

    Ranking uses the strongest ``RetrievalConfig.query_features`` of them (:meth:`for_ranking`); the geometric proof
    of an answer uses them all (at least :data:`~l2g_core.plan.VERIFY_QUERY_FEATURES` when the query has them).

    Attributes:
        descriptors: ``(Q, D)`` float32.
        keypoints: ``(Q, 2)`` float32.
        global_descriptor: ``(G,)`` float32.
    """

    descriptors: FloatArray
    keypoints: FloatArray
    global_descriptor: FloatArray

    @property
    def local_dim(self) -> int:
        """D."""
        return int(self.descriptors.shape[1])

    @property
    def global_dim(self) -> int:
        """G."""
        return int(self.global_descriptor.shape[0])

    def for_ranking(self, config: RetrievalConfig) -> PreparedQuery:
        """The query as stage 1 and the re-rankers see it: its strongest ``config.query_features`` features."""
        n = config.query_features
        if self.descriptors.shape[0] <= n:
            return self
        return replace(self, descriptors=self.descriptors[:n], keypoints=self.keypoints[:n])


def prepare_query(query: FrameFeatures, config: RetrievalConfig, local_dim: int, global_dim: int) -> PreparedQuery:
    """Check dimensions, keep the strongest ``max(config.query_features, VERIFY_QUERY_FEATURES)`` features (ranking
    uses the first ``query_features``, see :meth:`PreparedQuery.for_ranking`) and L2-normalise.

    Raises:
        ShapeError: dimensions differ from the index's.
    """
    if query.descriptors.shape[1] != local_dim:
        raise ShapeError(f"query descriptors have dimension {query.descriptors.shape[1]}, index has {local_dim}")
    if query.global_descriptor.shape[0] != global_dim:
        raise ShapeError(f"query global descriptor has dimension {query.global_descriptor.shape[0]}, "
                         f"index has {global_dim}")
    top = query.top(max(config.query_features, VERIFY_QUERY_FEATURES))
    return PreparedQuery(
        descriptors=l2_normalize(top.descriptors) if top.num_features else top.descriptors,
        keypoints=top.keypoints,
        global_descriptor=l2_normalize(query.global_descriptor),
    )
