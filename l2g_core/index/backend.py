"""FAISS index construction, GPU placement and (de)serialisation."""

from __future__ import annotations

import threading
from typing import Any

import faiss
import numpy as np

from l2g_core.config import IndexConfig
from l2g_core.errors import IndexStateError

__all__ = ["deserialize", "gpu_available", "new_flat", "serialize", "train_ivfpq", "tune_faiss"]

_tuned = threading.Event()


def tune_faiss() -> None:
    """Process-wide FAISS settings, applied once.

    faiss-cpu only uses BLAS for flat search with at least 128000 queries by default; a query image
    has ~1000 descriptors, so the threshold is lowered (identical results, ~4x faster).
    """
    if not _tuned.is_set():
        faiss.cvar.distance_compute_blas_threshold = 20
        _tuned.set()


def gpu_available() -> bool:
    """True when faiss was built with GPU support and sees a device."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def use_gpu(config: IndexConfig) -> bool:
    """Whether shards of this config live on the GPU."""
    if config.device == "cuda" and not gpu_available():
        raise IndexStateError("IndexConfig.device='cuda' but faiss has no GPU support or sees no GPU")
    return config.device == "cuda" or (config.device == "auto" and gpu_available())


_gpu_resources: Any = None


def to_device(index: faiss.Index, config: IndexConfig) -> faiss.Index:
    """Move a CPU index to the GPU when the config asks for it (flat indexes only)."""
    global _gpu_resources
    if not use_gpu(config) or not isinstance(index, faiss.IndexFlat):
        return index
    if _gpu_resources is None:
        _gpu_resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_gpu_resources, 0, index)


def new_flat(dim: int) -> faiss.Index:
    """An exact inner-product index."""
    tune_faiss()
    return faiss.IndexFlatIP(dim)


def train_ivfpq(sample: np.ndarray, config: IndexConfig) -> faiss.Index:
    """Train an empty IVF-PQ inner-product index on ``sample`` ``(n, D)`` float32 unit vectors.

    The number of lists is reduced when the sample is small (FAISS wants ~39 points per centroid).
    """
    tune_faiss()
    nlist = int(max(1, min(config.ivf_lists, sample.shape[0] // 39)))
    quantizer = faiss.IndexFlatIP(config.local_dim)
    index = faiss.IndexIVFPQ(quantizer, config.local_dim, nlist, config.pq_bytes, 8, faiss.METRIC_INNER_PRODUCT)
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.nprobe = min(config.nprobe, nlist)
    return index


def serialize(index: faiss.Index) -> np.ndarray:
    """FAISS index -> ``(bytes,)`` uint8 array (GPU indexes are copied to CPU first)."""
    if not isinstance(index, faiss.IndexFlat | faiss.IndexIVF) and hasattr(faiss, "index_gpu_to_cpu"):
        index = faiss.index_gpu_to_cpu(index)
    return np.asarray(faiss.serialize_index(index))


def deserialize(blob: np.ndarray) -> faiss.Index:
    """Inverse of :func:`serialize`."""
    tune_faiss()
    return faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
