"""FAISS index construction, GPU placement and (de)serialisation.

Process-wide FAISS settings are applied by :func:`configure_faiss`, which entry points call once at startup (the
``l2g-stream`` worker in ``Worker.open``, the benchmarks in their ``main``, the test suite in its conftest);
importing this module or building an index changes nothing process-wide.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import faiss
import numpy as np

from l2g_core.config import IndexConfig
from l2g_core.errors import IndexStateError

__all__ = [
    "BLAS_THRESHOLD",
    "configure_faiss",
    "deserialize",
    "gpu_available",
    "gpu_resources",
    "new_flat",
    "serialize",
    "train_ivfpq",
]

BLAS_THRESHOLD = 20
"""Query count from which flat search uses BLAS (see :func:`configure_faiss`)."""


def configure_faiss(*, blas_threshold: int = BLAS_THRESHOLD, gpu: bool | None = None) -> None:
    """Apply the process-wide FAISS settings; call once at an entry point, before building indexes.

    * ``faiss.cvar.distance_compute_blas_threshold``: faiss-cpu only uses BLAS for flat search with at least
      128000 queries by default; a query image has ~1000 descriptors, so the threshold is lowered to
      ``blas_threshold`` (identical results, ~4x faster).
    * GPU resources: with ``gpu`` (default: when :func:`gpu_available`), the process's one
      ``StandardGpuResources`` is created now, at startup, rather than by the first GPU shard.

    Idempotent.
    """
    faiss.cvar.distance_compute_blas_threshold = blas_threshold
    if gpu is None:
        gpu = gpu_available()
    if gpu:
        gpu_resources()


def gpu_available() -> bool:
    """True when faiss was built with GPU support and sees a device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def use_gpu(config: IndexConfig) -> bool:
    """Whether shards of this config live on the GPU."""
    if config.device == "cuda" and not gpu_available():
        raise IndexStateError("IndexConfig.device='cuda' but faiss has no GPU support or sees no GPU")
    return config.device == "cuda" or (config.device == "auto" and gpu_available())


_GPU_LOCK = threading.Lock()


@functools.cache
def _new_gpu_resources() -> Any:
    if not hasattr(faiss, "StandardGpuResources"):
        raise IndexStateError("faiss was built without GPU support")
    return faiss.StandardGpuResources()


def gpu_resources() -> Any:
    """The process's FAISS GPU memory pools (one ``StandardGpuResources``, shared by every GPU shard).

    Created by :func:`configure_faiss` at startup, or by the first GPU shard when an entry point did not call it.

    Raises:
        IndexStateError: faiss has no GPU support.
    """
    with _GPU_LOCK:
        return _new_gpu_resources()


def to_device(index: faiss.Index, config: IndexConfig) -> faiss.Index:
    """Move a CPU index to the GPU when the config asks for it (flat indexes only)."""
    if not use_gpu(config) or not isinstance(index, faiss.IndexFlat):
        return index
    return faiss.index_cpu_to_gpu(gpu_resources(), 0, index)


def new_flat(dim: int) -> faiss.Index:
    """An exact inner-product index."""
    return faiss.IndexFlatIP(dim)


def train_ivfpq(sample: np.ndarray, config: IndexConfig) -> faiss.Index:
    """Train an empty IVF-PQ inner-product index on ``sample`` ``(n, D)`` float32 unit vectors.

    Codes take ``config.pq_bytes`` bytes per vector. When ``D`` splits into ``2 * pq_bytes`` sub-vectors the codec
    is PQ fast-scan (``IndexIVFPQFastScan``: ``2 * pq_bytes`` sub-quantizers of 4 bits, scanned with SIMD
    lookups, ~3x faster than 8-bit PQ at the same size and ~9x faster to train); otherwise ``IndexIVFPQ`` with
    ``pq_bytes`` 8-bit sub-quantizers. The number of lists is reduced when the sample is small (FAISS wants ~39
    points per centroid).
    """
    d = config.local_dim
    nlist = int(max(1, min(config.ivf_lists, sample.shape[0] // 39)))
    quantizer = faiss.IndexFlatIP(d)
    index: Any
    if d % (2 * config.pq_bytes) == 0:
        index = faiss.IndexIVFPQFastScan(quantizer, d, nlist, 2 * config.pq_bytes, 4, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, nlist, config.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.nprobe = min(config.nprobe, nlist)
    trained: faiss.Index = index
    return trained


def serialize(index: faiss.Index) -> np.ndarray:
    """FAISS index -> ``(bytes,)`` uint8 array (GPU indexes are copied to CPU first)."""
    if not isinstance(index, faiss.IndexFlat | faiss.IndexIVF) and hasattr(faiss, "index_gpu_to_cpu"):
        index = faiss.index_gpu_to_cpu(index)
    return np.asarray(faiss.serialize_index(index))


def deserialize(blob: np.ndarray) -> faiss.Index:
    """Inverse of :func:`serialize`."""
    return faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
