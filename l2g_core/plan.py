"""The search plan: everything a retrieval mode needs, decided once from ``(mode, k, config)``.

Every component of the two-stage search reads the plan instead of knowing the modes: stage 1 keeps
``shortlist`` candidates per index, the merge of several indexes' candidates keeps ``shortlist`` again, stage 2
re-ranks (or not) as ``rerank`` says, and ``transport`` says what of a stage-1 list stage 2 can use, so that a
scaled-out deployment can ship only that and still answer exactly as one process searching every index.

=================  ======  =================================  ==========================================
mode               stage 1 shortlist                          stage 2
=================  ======  =================================  ==========================================
``global``         global  ``k``                              none (global cosine order)
``global_to_local`` global ``max(k, g2l_shortlist)``          RANSAC inliers of every candidate
``local``          local   ``k``                              none (kernel Chamfer order)
``l2g``            local   ``max(k, shortlist)``              MDS + global fusion of the first ``rerank_k``
=================  ======  =================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from l2g_core.config import RetrievalConfig
from l2g_core.errors import ConfigError

__all__ = ["MAX_K", "MODES", "Mode", "SearchPlan", "Stage", "Transport"]

Mode = Literal["global", "global_to_local", "local", "l2g"]
MODES: tuple[Mode, ...] = get_args(Mode)
Stage = Literal["local", "global"]
MAX_K = 10_000


@dataclass(frozen=True)
class Transport:
    """What of one index's stage-1 list stage 2 of a mode can use (the smallest exact partial answer).

    Attributes:
        candidates: candidates kept per index.
        described: how many of them (the best) keep local descriptors.
        descriptors: descriptors kept per described candidate (None: all stored).
        keypoints: whether keypoints are needed.
        query_features: query features stage 2 uses (None: all).
    """

    candidates: int
    described: int
    descriptors: int | None
    keypoints: bool
    query_features: int | None


@dataclass(frozen=True)
class SearchPlan:
    """A validated retrieval request: build it with :meth:`build`.

    Attributes:
        mode: the retrieval mode.
        k: hits returned.
        stage1: what stage 1 scores: ``local`` (kernel Chamfer) or ``global`` (cosine).
        shortlist: candidates stage 1 keeps per index, and the merged list keeps over all indexes.
        rerank: the stage-2 re-ranking: ``None``, ``"ransac"`` (global_to_local) or ``"l2g"``.
        transport: what stage 2 needs of each index's list.
    """

    mode: Mode
    k: int
    stage1: Stage
    shortlist: int
    rerank: Literal["ransac", "l2g"] | None
    transport: Transport

    @classmethod
    def build(cls, mode: str, k: int, config: RetrievalConfig) -> SearchPlan:
        """The plan of ``mode`` for ``k`` hits under ``config``.

        Raises:
            ConfigError: unknown mode or ``k`` outside ``[1, MAX_K]``.
        """
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ConfigError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        if mode == "l2g":
            shortlist = max(k, config.shortlist)
            sent = min(max(k, config.rerank_k), shortlist)
            transport = Transport(sent, config.rerank_k, config.graph_features, False, config.graph_features)
            return cls("l2g", k, "local", shortlist, "l2g", transport)
        if mode == "global_to_local":
            shortlist = max(k, config.g2l_shortlist)
            return cls("global_to_local", k, "global", shortlist, "ransac",
                       Transport(shortlist, shortlist, None, True, None))
        stage: Stage = "global" if mode == "global" else "local"
        return cls(stage, k, stage, k, None, Transport(k, 0, 0, False, 0))
