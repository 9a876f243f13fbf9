"""SuperGlobal re-ranking (Shao et al., ICCV 2023): MDescAug on the database side, RerankwMDA on the query side.

Follows the official code: K+1 neighbours (including the item itself, weight 1, others weight
``beta * similarity``), a weighted mean that is not re-normalised, the query refined by an elementwise max
over the top K+1 refined vectors, and the final score the mean of both similarities.
"""

from __future__ import annotations

import torch

__all__ = ["superglobal_scores"]


def superglobal_scores(query: torch.Tensor, database: torch.Tensor, *, k: int = 9, beta: float = 0.15) -> torch.Tensor:
    """Re-ranking scores of ``database`` items for ``query``.

    Args:
        query: ``(P,)`` unit-norm descriptor.
        database: ``(M, P)`` unit-norm descriptors of the shortlist.
        k: neighbourhood size K (K+1 items including self are averaged).
        beta: weight of the neighbours relative to the item itself.

    Returns:
        ``(M,)`` scores, higher is better.
    """
    m = database.shape[0]
    if m == 0:
        return database.new_zeros((0,))
    kk = min(k + 1, m)
    gram = database @ database.T
    gram.fill_diagonal_(float("inf"))  # the item itself always comes first
    sims, idx = gram.topk(kk, dim=1)
    weights = beta * sims
    weights[:, 0] = 1.0
    refined = (weights[:, :, None] * database[idx]).sum(1) / weights.sum(1, keepdim=True)
    s1 = refined @ query
    top = s1.topk(kk).indices
    query_refined = refined[top].amax(0)
    s2 = refined @ query_refined
    return (s1 + s2) / 2
