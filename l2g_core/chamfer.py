"""Chamfer (CANN-style) similarity between a query's local features and frames.

The similarity of a query feature set Q to a frame's feature set X is

    S(Q, X) = 1/|Q| * sum_{q in Q} k( max_{x in X} <q, x> ),   k(s) = max(0, (s - tau) / (1 - tau)) ** alpha

so each query feature contributes through its best match *within each frame* (the "colour constraint" of
CANN). With tau = 0 and alpha = 1 it is the asymmetric Chamfer similarity; alpha > 1 is a selectivity
function (as in ASMK) that silences weak matches.
"""

from __future__ import annotations

import numpy as np
import torch

from l2g_core.types import FloatArray

__all__ = ["DENSE_LIMIT", "DENSE_PER_MATCH", "aggregate_neighbors", "exact_chamfer", "kernel", "pairwise_chamfer"]

DENSE_LIMIT = 1 << 21
"""Largest ``Q * num_frames`` that :func:`aggregate_neighbors` scores in a dense ``(Q, num_frames)`` buffer
(16 MiB of float64); larger problems take the sort-based path."""

DENSE_PER_MATCH = 32
"""The dense buffer is also used only while it has at most this many cells per neighbour entry: filling and
summing it costs per cell, sorting the entries per entry. 128 x 64 entries cost the same both ways at ~2 500 frames
(0.48 ms); at 6 250 frames, a 100k index's segment, the dense buffer took 1.8 ms and the sort 0.48."""


def kernel(sims: np.ndarray, tau: float, alpha: float) -> np.ndarray:
    """The per-match kernel ``k(s)`` applied elementwise; same shape, float32."""
    x = np.clip((np.asarray(sims, dtype=np.float32) - tau) / (1.0 - tau), 0.0, 1.0)
    out: np.ndarray = x if alpha == 1.0 else x**alpha
    return out


def aggregate_neighbors(
    sims: FloatArray, frames: np.ndarray, num_frames: int, *, tau: float, alpha: float
) -> FloatArray:
    """Chamfer scores of frames from per-query-feature neighbour lists.

    Only matches present in the neighbour lists count; a frame absent from a query feature's list
    contributes 0 for that feature (an approximation that is exact once the list holds each frame's best
    match, e.g. with an exhaustive list).

    Args:
        sims: ``(Q, k)`` float32 inner products, each row sorted in descending order.
        frames: ``(Q, k)`` int64 frame numbers in ``[0, num_frames)``, ``-1`` for padding.
        num_frames: number of frames the numbers refer to.
        tau, alpha: kernel parameters.

    Returns:
        ``(num_frames,)`` float32 scores (sum of kernel values; divide by ``|Q|`` for the mean).
    """
    q, k = frames.shape
    if q == 0 or k == 0 or num_frames == 0:
        return np.zeros(num_frames, np.float32)
    rows = np.repeat(np.arange(q, dtype=np.int64), k)
    flat_frames = frames.reshape(-1)
    valid = flat_frames >= 0
    keys = rows[valid] * num_frames + flat_frames[valid]
    contrib = kernel(sims.reshape(-1)[valid], tau, alpha).astype(np.float64)  # (float64 keeps ufunc.at fast)
    if q * num_frames <= min(DENSE_LIMIT, DENSE_PER_MATCH * keys.size):
        # best match of each (query feature, frame) = max over its entries (the kernel is non-decreasing), summed
        # over query features in row order, in float64 as bincount does: the same value as the sparse path
        best = np.zeros(q * num_frames, np.float64)
        np.maximum.at(best, keys, contrib)
        dense: FloatArray = best.reshape(q, num_frames).sum(axis=0).astype(np.float32)
        return dense
    # rows are sorted by similarity, so the first occurrence of (query feature, frame) is its best match
    _, first = np.unique(keys, return_index=True)
    return np.bincount(flat_frames[valid][first], weights=contrib[first], minlength=num_frames).astype(np.float32)


def exact_chamfer(query: FloatArray, frames: list[FloatArray], *, tau: float = 0.0, alpha: float = 1.0) -> FloatArray:
    """Brute-force reference: ``(F,)`` float32 mean kernel Chamfer similarity of ``query`` ``(Q, D)`` to each
    frame's descriptors ``(N_i, D)``; an empty frame scores 0."""
    out = np.zeros(len(frames), np.float32)
    if query.shape[0] == 0:
        return out
    for i, x in enumerate(frames):
        if x.shape[0]:
            out[i] = kernel((query @ x.T).max(axis=1), tau, alpha).mean()
    return out


def pairwise_chamfer(sets: list[torch.Tensor], *, tau: float, alpha: float, block_sets: int = 32,
                     head: int | None = None) -> torch.Tensor:
    """Dense asymmetric Chamfer similarity between every pair of feature sets.

    Sets are zero-padded to a common size: a padding vector has similarity 0 to everything, and the kernel
    maps similarities <= tau (tau >= 0) to 0, so padding never changes a maximum that matters. Each block pair's
    feature products serve both directions (``S[i, j]`` takes the best match over set j's features, ``S[j, i]``
    over set i's), so only the upper triangle of blocks is multiplied: half the FLOPs of the full product.

    Args:
        sets: ``m`` tensors ``(n_i, D)`` of unit descriptors on one device (float32 or float16).
        tau, alpha: kernel parameters.
        block_sets: sets on the left of each product (a ``(block_sets * n_max, m * n_max)`` float32 block at
            most: 79 MB for 151 sets of 64 features). Smaller blocks are a little faster on an idle CPU (151 sets,
            2 cores: 8 / 32 sets 269 / 258-349 ms) but each block is a dozen multi-threaded ops, and on a CPU that
            another process keeps busy 8 took 2003 ms against 1143 with 32 (the full product before: 1066).
        head: only the rows and columns of the first ``head`` sets (one block; the other entries are 0), e.g. the
            query's row and column of a graph whose other pairs come from fewer features.

    Returns:
        ``(m, m)`` float32 tensor ``S[i, j] = S(set_i, set_j)`` (rows of empty sets are 0).
    """
    m = len(sets)
    device = sets[0].device if sets else torch.device("cpu")
    out = torch.zeros((m, m), dtype=torch.float32, device=device)
    n_max = max((s.shape[0] for s in sets), default=0)
    if n_max == 0:
        return out
    dim = sets[0].shape[1]
    padded = torch.zeros((m, n_max, dim), dtype=torch.float32, device=device)
    counts = torch.zeros(m, dtype=torch.float32, device=device)
    for i, s in enumerate(sets):
        padded[i, : s.shape[0]] = s
        counts[i] = s.shape[0]
    valid = (torch.arange(n_max, device=device)[None, :] < counts[:, None]).to(torch.float32)  # (m, n_max)

    def summed(best: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Kernel of best matches ``(a, n_max, b)`` summed over the valid features of the ``a`` side: ``(a, b)``."""
        k = ((best - tau) / (1.0 - tau)).clamp(0.0, 1.0)
        if alpha != 1.0:
            k = k**alpha
        return (k * mask[:, :, None]).sum(dim=1)

    if head is None:
        blocks = [slice(a, min(a + block_sets, m)) for a in range(0, m, block_sets)]
    else:
        blocks = [slice(0, min(head, m))] if head > 0 else []
    for rows in blocks:
        a = rows.start
        left = padded[rows].reshape(-1, dim)  # (bi * n_max, D)
        right = padded[a:].reshape(-1, dim)  # this block and every later one
        sims = (left @ right.T).reshape(rows.stop - a, n_max, m - a, n_max)
        out[rows, a:] = summed(sims.amax(dim=3), valid[rows])  # S[i, j]: each feature of i, best within j
        out[a:, rows] = summed(sims.amax(dim=1).permute(1, 2, 0), valid[a:])  # S[j, i]: features of j, best in i
    return out / counts.clamp_min(1.0)[:, None]
