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
``l2g``            local   ``max(k, shortlist, rerank_k)``    MDS + global fusion of the first ``rerank_k``
                           + global top ``global_shortlist``  and of the global top ``global_shortlist``
=================  ======  =================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from l2g_core.config import RetrievalConfig
from l2g_core.errors import ConfigError

__all__ = ["MAX_K", "MODES", "VERIFY_QUERY_FEATURES", "Mode", "SearchPlan", "Stage", "Transport"]

Mode = Literal["global", "global_to_local", "local", "l2g"]
MODES: tuple[Mode, ...] = get_args(Mode)
Stage = Literal["local", "global"]
MAX_K = 10_000
# query features sent for the geometric proof of the top matches: on real video crops the proof found with the
# strongest 256 is the one found with 1024 (a frame keeps only ``rerank_features`` = 128 to match against)
VERIFY_QUERY_FEATURES = 256


@dataclass(frozen=True)
class Transport:
    """What of one index's stage-1 list stage 2 of a mode can use (the smallest exact partial answer).

    Attributes:
        candidates: candidates of the ranking kept per index (an index's joined tail travels whole, described
            like the ranking's ``described`` best).
        described: how many of them (the best) keep local descriptors.
        descriptors: descriptors kept per described candidate (None: all stored).
        keypoints: whether keypoints are needed (of every descriptor sent).
        query_features: query features stage 2 uses (None: all).
        verified: how many of the candidates (the best) keep every stored descriptor, whatever ``described`` and
            ``descriptors`` say, for the geometric proof of the final top matches (added information: stage 2
            reads the descriptors it reads without it).
    """

    candidates: int
    described: int
    descriptors: int | None
    keypoints: bool
    query_features: int | None
    verified: int = 0


@dataclass(frozen=True)
class SearchPlan:
    """A validated retrieval request: build it with :meth:`build`.

    Attributes:
        mode: the retrieval mode.
        k: hits returned.
        stage1: what stage 1 scores: ``local`` (kernel Chamfer) or ``global`` (cosine).
        shortlist: candidates stage 1 keeps per index, and the merged list keeps over all indexes.
        rerank: the stage-2 re-ranking: ``None``, ``"ransac"`` (global_to_local) or ``"l2g"``.
        transport: what stage 2 needs of each index's list (and the geometric proof of the first ``verify``).
        verify: final hits that get a geometric proof (0: none); it changes what travels, never the ranking.
        joined: frames by global cosine that join stage 2 whatever their stage-1 rank (each index's best as the
            tail of its list, the best over all after the merge; ``l2g`` only, see
            ``RetrievalConfig.global_shortlist``).
    """

    mode: Mode
    k: int
    stage1: Stage
    shortlist: int
    rerank: Literal["ransac", "l2g"] | None
    transport: Transport
    verify: int = 0
    joined: int = 0

    @classmethod
    def build(cls, mode: str, k: int, config: RetrievalConfig, verify: int = 0) -> SearchPlan:
        """The plan of ``mode`` for ``k`` hits under ``config``.

        ``verify`` > 0 makes the transport carry what the geometric proof of the first ``verify`` final hits needs
        (keypoints of the descriptors sent, every stored descriptor of each index's best ``verify`` candidates, and
        at least :data:`VERIFY_QUERY_FEATURES` query features) on top of what the ranking needs. In ``global``,
        ``local`` and ``global_to_local`` the final top ``verify`` are among those candidates; in ``l2g`` a final
        hit from lower in an index's list has its proof from the ``graph_features`` descriptors sent for the graph.

        Raises:
            ConfigError: unknown mode, ``k`` outside ``[1, MAX_K]`` or a negative ``verify``.
        """
        if isinstance(verify, bool) or not isinstance(verify, int) or verify < 0:
            raise ConfigError(f"verify must be an integer >= 0, got {verify!r}")
        plan = cls._build(mode, k, config)
        if verify == 0:
            return plan
        verify = min(verify, k)
        t = plan.transport
        queries = None if t.query_features is None else max(t.query_features, VERIFY_QUERY_FEATURES)
        transport = Transport(t.candidates, t.described, t.descriptors, True, queries, min(verify, t.candidates))
        return cls(plan.mode, plan.k, plan.stage1, plan.shortlist, plan.rerank, transport, verify, plan.joined)

    @classmethod
    def _build(cls, mode: str, k: int, config: RetrievalConfig) -> SearchPlan:
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ConfigError(f"k must be an integer in [1, {MAX_K}], got {k!r}")
        if mode == "l2g":
            shortlist = max(k, config.shortlist, config.rerank_k)  # the list always holds the re-ranked head
            sent = max(k, config.rerank_k)
            transport = Transport(sent, config.rerank_k, config.graph_features, False, config.graph_features)
            return cls("l2g", k, "local", shortlist, "l2g", transport, joined=config.global_shortlist)
        if mode == "global_to_local":
            shortlist = max(k, config.g2l_shortlist)
            return cls("global_to_local", k, "global", shortlist, "ransac",
                       Transport(shortlist, shortlist, None, True, None))
        stage: Stage = "global" if mode == "global" else "local"
        return cls(stage, k, stage, k, None, Transport(k, 0, 0, False, 0))
