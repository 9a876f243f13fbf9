"""Global cosine passes: the cosine of every stored frame's global descriptor with the query's, and the best few.

The index stores global descriptors as unit float16 vectors by default (``IndexConfig.global_dtype``): 2.5 kB per
frame instead of 5 kB at 1280-D, and half the memory to read in the one pass that touches every frame of a query.
A frame's cosine is always the float32 dot product of its stored vector (widened exactly to float32) with the
float32 query, computed row by row (:func:`global_cosine`), so every index, message and merge orders frames alike.

:func:`top_global_cosines` finds the best ones without computing that for every row: a float16 matrix-vector
product (torch, float32 accumulation, float16 output; 14 ms at 100k x 1280 on two threads, against 29 ms for the
float32 pass over float32 globals) bounds every row's cosine, and only the rows that the bound cannot rule out are
computed exactly. The result is the same as ranking the exact cosines of every row.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import torch

from l2g_core.types import FloatArray

__all__ = [
    "PARALLEL_COSINE_ROWS",
    "global_cosine",
    "global_cosines",
    "top_global_cosines",
    "top_positions",
    "torch_view",
    "widen",
]

PARALLEL_COSINE_ROWS = 16_384
"""Rows from which :func:`global_cosines` splits the work over threads (below it, one thread is faster)."""

_WIDEN_ROWS = 256
"""float16 rows widened to float32 at a time by :func:`global_cosine` (a buffer that stays in cache)."""

_POOL_LOCK = threading.Lock()
_POOL: tuple[ThreadPoolExecutor, int] | None = None  # (executor, its threads)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The process's cosine threads (grown, never shrunk, to ``workers``)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[1] < workers:
            old, _POOL = _POOL, (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="l2g-cosine"), workers)
            if old is not None:
                old[0].shutdown(wait=False)
        return _POOL[0]


def torch_view(array: np.ndarray) -> torch.Tensor:
    """A torch tensor over ``array``'s memory (C-contiguous; a copy when ``array`` is read-only, e.g. decoded from a
    message: torch cannot view read-only memory)."""
    contiguous = np.ascontiguousarray(array)
    return torch.from_numpy(contiguous if contiguous.flags.writeable else contiguous.copy())


def widen(descriptors: np.ndarray) -> FloatArray:
    """``descriptors`` as float32 (exact for float16; torch converts ~2.5x faster than numpy)."""
    if descriptors.dtype == np.float16:
        out: FloatArray = torch_view(descriptors).float().numpy()
        return out
    return np.asarray(descriptors, np.float32)


def global_cosine(global_descriptors: np.ndarray, query_global: FloatArray) -> FloatArray:
    """``(n,)`` float32 cosines of ``(n, G)`` unit global descriptors (float32, or float16 widened exactly to
    float32) with the ``(G,)`` float32 query descriptor.

    Computed row by row in one fixed order (``einsum``, not BLAS, whose blocking may depend on the other rows): a
    frame's value is the same in every index, every message and every merge, so each orders frames alike. float16
    rows are widened a few hundred at a time by torch (numpy's float16 conversion is ~10x slower).
    """
    q = np.ascontiguousarray(query_global, dtype=np.float32)
    if global_descriptors.dtype != np.float16:
        g = np.ascontiguousarray(global_descriptors, dtype=np.float32)
        out: FloatArray = np.einsum("ij,j->i", g, q).astype(np.float32, copy=False)
        return out
    rows = torch_view(global_descriptors)
    n = rows.shape[0]
    result = np.empty(n, np.float32)
    buffer = torch.empty((min(n, _WIDEN_ROWS), q.shape[0]), dtype=torch.float32)
    wide = buffer.numpy()
    for start in range(0, n, _WIDEN_ROWS):
        chunk = rows[start:start + _WIDEN_ROWS]
        buffer[:chunk.shape[0]].copy_(chunk)
        result[start:start + chunk.shape[0]] = np.einsum("ij,j->i", wide[:chunk.shape[0]], q)
    return result


def global_cosines(blocks: Sequence[np.ndarray], query_global: FloatArray, threads: int | None = None
                   ) -> FloatArray:
    """:func:`global_cosine` of every row of the ``(n_i, G)`` ``blocks``, one after another: ``(sum n_i,)`` float32.

    The pass reads every stored global and is bound by memory, which one thread does not saturate: with
    ``threads`` > 1 (default: FAISS's OpenMP threads, the index's thread budget) the blocks are split over that many
    threads, each taking consecutive blocks (two threads: 54 -> 34 ms at 100k frames of float32). Each row's value
    is computed alone, so the result is the same bit for bit whatever the split.
    """
    if not blocks:
        return np.zeros(0, np.float32)
    if threads is None:
        threads = faiss.omp_get_max_threads()
    rows = np.cumsum([b.shape[0] for b in blocks])
    if threads <= 1 or rows[-1] < PARALLEL_COSINE_ROWS:
        return np.concatenate([global_cosine(b, query_global) for b in blocks])
    cuts = [0, *np.searchsorted(rows, rows[-1] * np.arange(1, threads) / threads, side="right").tolist(), len(blocks)]
    parts = [blocks[a:b] for a, b in itertools.pairwise(cuts)]

    def run(part: Sequence[np.ndarray]) -> list[FloatArray]:
        return [global_cosine(b, query_global) for b in part]

    futures = [_pool(threads - 1).submit(run, part) for part in parts[1:]]
    first = run(parts[0])
    return np.concatenate([*first, *(x for f in futures for x in f.result())])


def top_positions(values: FloatArray, limit: int) -> np.ndarray:
    """Positions of the best ``limit`` of ``values`` ``(n,)`` float32, plus every value tied with the last one (so
    that a merge that breaks ties by frame key gets the same frames whatever the order of the rows), ascending."""
    if values.size <= limit:
        return np.arange(values.size)
    if limit <= 0:
        return np.zeros(0, np.int64)
    cut = values[np.argpartition(-values, limit - 1)[limit - 1]]
    return np.flatnonzero(values >= cut)


def _float16_bound(blocks: Sequence[np.ndarray], query_global: FloatArray) -> tuple[FloatArray, float]:
    """Approximate cosines of every row of the float16 ``blocks`` (``(sum n_i,)`` float32) and a bound on their
    distance to :func:`global_cosine`'s, for rows of norm at most ``1 + 2**-10`` (unit vectors in float16).

    The product rounds the query to float16 (at most ``2**-11 |q|`` away in norm, so ``2**-11 |g| |q|`` in the
    dot product), accumulates in float32 (at most ``G 2**-24 |g| |q|`` apart from another float32 order) and rounds
    the result to float16 (``2**-11`` of its magnitude). Each term is doubled for margin."""
    q = np.ascontiguousarray(query_global, dtype=np.float32)
    q16 = torch.from_numpy(q.astype(np.float16))
    approx = np.concatenate([torch.mv(torch_view(b), q16).numpy() for b in blocks]
                            ).astype(np.float32)
    norm = (1.0 + 2.0**-10) * float(np.linalg.norm(q))
    bound = 2.0 * (2.0**-11 * norm + q.shape[0] * 2.0**-24 * norm + 2.0**-11 * float(np.abs(approx).max()))
    return approx, bound


def top_global_cosines(blocks: Sequence[np.ndarray], query_global: FloatArray, limit: int,
                       threads: int | None = None) -> tuple[np.ndarray, FloatArray]:
    """The best ``limit`` rows of ``blocks`` by :func:`global_cosine`, with ties (:func:`top_positions`).

    Args:
        blocks: ``(n_i, G)`` unit global descriptors, float16 or float32 (all of one dtype), one after another.
        query_global: ``(G,)`` float32.
        limit: rows wanted.
        threads: for a float32 pass, as in :func:`global_cosines`.

    Returns:
        ``(positions, cosines)``: ``(m,)`` int64 ascending row numbers (over the blocks in order) and their
        ``(m,)`` float32 :func:`global_cosine` values; exactly the rows :func:`top_positions` picks from
        :func:`global_cosines`.
    """
    blocks = [b for b in blocks if b.shape[0]]
    if not blocks or limit <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if blocks[0].dtype != np.float16:
        cosine = global_cosines(blocks, query_global, threads)
        best = top_positions(cosine, limit)
        return best, cosine[best]
    approx, bound = _float16_bound(blocks, query_global)
    if approx.size <= limit:
        maybe = np.arange(approx.size)
    else:
        cut = approx[np.argpartition(-approx, limit - 1)[limit - 1]]
        maybe = np.flatnonzero(approx >= cut - 2 * bound)  # every row whose exact cosine can reach the cut
    starts = np.concatenate([[0], np.cumsum([b.shape[0] for b in blocks])])
    owner = np.searchsorted(starts, maybe, side="right") - 1
    rows = np.concatenate([blocks[o][maybe[owner == o] - starts[o]] for o in np.unique(owner)])
    exact = global_cosine(rows, query_global)
    best = top_positions(exact, limit)
    return maybe[best], exact[best]
