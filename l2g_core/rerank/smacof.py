"""Batched metric SMACOF multidimensional scaling in torch (CPU or CUDA).

Minimises the raw stress ``sigma(X) = 1/2 sum_ij w_ij (d_ij(X) - delta_ij)^2`` by Guttman transforms
(de Leeuw; Borg & Groenen). Unweighted problems use ``X+ = B(X) X / n``; weighted ones use the
Moore-Penrose inverse of V, computed once per problem as ``(V + 11^T/n)^-1 - 11^T/n``.
The stopping rule and the stress value follow ``sklearn.manifold.smacof`` (>= 1.7), so the unweighted
result can be checked against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from l2g_core.errors import ShapeError

__all__ = ["SmacofResult", "classical_mds", "smacof"]


@dataclass(frozen=True)
class SmacofResult:
    """Output of :func:`smacof`.

    Attributes:
        embedding: ``(B, n, p)`` float tensor, centred configurations.
        stress: ``(B,)`` raw stress of each configuration (half the weighted sum over all ordered pairs).
        n_iter: ``(B,)`` int64, Guttman iterations run per problem.
    """

    embedding: torch.Tensor
    stress: torch.Tensor
    n_iter: torch.Tensor


def _pairwise(x: torch.Tensor, offdiag: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, n, p)`` -> ``(B, n, n)`` Euclidean distances with an exact zero diagonal (``offdiag``: ``1 - I``,
    made here when not given)."""
    sq = (x * x).sum(-1)
    d2 = sq[:, :, None] + sq[:, None, :] - 2.0 * x @ x.transpose(1, 2)
    d = d2.clamp_min(0.0).sqrt()
    if offdiag is None:
        offdiag = 1.0 - torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return d * offdiag


def classical_mds(delta: torch.Tensor, dim: int) -> torch.Tensor:
    """Torgerson classical MDS: the top-``dim`` eigenvectors of ``-1/2 J (delta o delta) J``.

    Args:
        delta: ``(B, n, n)`` symmetric dissimilarities with zero diagonal.
        dim: output dimension p (``<= n``).

    Returns:
        ``(B, n, dim)`` centred coordinates (deterministic up to eigenvector sign, which is fixed so
        that the largest-magnitude entry of each column is positive).
    """
    n = delta.shape[-1]
    j = torch.eye(n, dtype=delta.dtype, device=delta.device) - 1.0 / n
    b = -0.5 * j @ (delta * delta) @ j
    evals, evecs = torch.linalg.eigh(b)
    evals = evals.flip(-1)[:, :dim].clamp_min(0.0)
    evecs = evecs.flip(-1)[:, :, :dim]
    idx = evecs.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(torch.gather(evecs, 1, idx))
    signs[signs == 0] = 1.0
    coords: torch.Tensor = evecs * signs * evals.sqrt()[:, None, :]
    return coords


def smacof(
    delta: torch.Tensor,
    *,
    dim: int,
    weights: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
    max_iter: int = 300,
    eps: float = 1e-6,
) -> SmacofResult:
    """Metric SMACOF on a batch of problems.

    Args:
        delta: ``(B, n, n)`` or ``(n, n)`` symmetric non-negative dissimilarities, zero diagonal.
        dim: embedding dimension p (ignored when ``init`` is given).
        weights: optional ``(B, n, n)`` symmetric non-negative weights; the weight graph must be
            connected. ``None`` means all ones (the plain Guttman update).
        init: optional ``(B, n, p)`` start; default is classical MDS (deterministic).
        max_iter: iteration cap.
        eps: stop a problem when ``(stress_prev - stress) / (sum d_ij^2 / 2) < eps``.

    Returns:
        A :class:`SmacofResult`; batch axis present even for a single ``(n, n)`` input.

    Raises:
        ShapeError: on inconsistent shapes.
    """
    if delta.ndim == 2:
        delta = delta[None]
    if weights is not None and weights.ndim == 2:
        weights = weights[None]
    if delta.ndim != 3 or delta.shape[1] != delta.shape[2]:
        raise ShapeError(f"delta must be (B, n, n), got {tuple(delta.shape)}")
    bsz, n, _ = delta.shape
    if weights is not None and weights.shape != delta.shape:
        raise ShapeError(f"weights must match delta {tuple(delta.shape)}, got {tuple(weights.shape)}")
    offdiag = 1.0 - torch.eye(n, dtype=delta.dtype, device=delta.device)
    x = classical_mds(delta, min(dim, n)) if init is None else init.to(delta)
    if x.ndim == 2:
        x = x[None]
    if x.shape[:2] != (bsz, n):
        raise ShapeError(f"init must be (B, n, p) with B={bsz}, n={n}, got {tuple(x.shape)}")
    w = None if weights is None else weights * offdiag
    v_pinv = None
    if w is not None:
        v = torch.diag_embed(w.sum(-1)) - w
        ones = torch.full((n, n), 1.0 / n, dtype=delta.dtype, device=delta.device)
        v_pinv = torch.linalg.inv(v + ones) - ones

    active = torch.ones(bsz, dtype=torch.bool, device=delta.device)
    n_iter = torch.zeros(bsz, dtype=torch.int64, device=delta.device)
    old_stress = torch.full((bsz,), float("inf"), dtype=delta.dtype, device=delta.device)
    stress = old_stress.clone()
    d = _pairwise(x, offdiag)  # (each iteration's d_new is the next one's d: computed once)
    for _ in range(max_iter):
        ratio = torch.where(d > 0, delta / d.clamp_min(1e-12), torch.zeros_like(d)) * offdiag
        if w is not None:
            ratio = ratio * w
        b = -ratio
        b = b + torch.diag_embed(ratio.sum(-1))
        x_new = (b @ x) / n if v_pinv is None else v_pinv @ (b @ x)
        d_new = _pairwise(x_new, offdiag)
        resid = (d_new - delta) ** 2
        new_stress = 0.5 * (resid if w is None else resid * w).sum((1, 2))
        denom = 0.5 * (d_new * d_new).sum((1, 2))
        converged = (old_stress - new_stress) / denom.clamp_min(1e-30) < eps
        x = torch.where(active[:, None, None], x_new, x)
        d = torch.where(active[:, None, None], d_new, d)
        stress = torch.where(active, new_stress, stress)
        n_iter = n_iter + active.to(torch.int64)
        old_stress = torch.where(active, new_stress, old_stress)
        active = active & ~converged
        if not bool(active.any()):
            break
    return SmacofResult(embedding=x, stress=stress, n_iter=n_iter)
