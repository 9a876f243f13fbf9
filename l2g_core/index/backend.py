"""FAISS index construction, GPU placement and (de)serialisation.

GPU indexes live on one thread: a :class:`GpuExecutor` owns the ``StandardGpuResources`` and runs every call on a
GPU index (FAISS GPU objects are not thread-safe, and the ingest and query threads share the index).

Process-wide FAISS settings are applied by :func:`configure_faiss`, which entry points call once at startup (the
``l2g-stream`` worker in ``Worker.open``, the benchmarks in their ``main``, the test suite in its conftest);
importing this module or building an index changes nothing process-wide.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import faiss
import numpy as np

from l2g_core.config import IndexConfig
from l2g_core.errors import IndexStateError

__all__ = [
    "BLAS_THRESHOLD",
    "GpuExecutor",
    "GpuIndex",
    "configure_faiss",
    "deserialize",
    "faiss_has_gpu",
    "gpu_available",
    "gpu_executor",
    "gpu_resources",
    "index_device",
    "new_flat",
    "serialize",
    "set_gpu_executor",
    "to_cpu",
    "to_device",
    "train_ivfpq",
]

_T = TypeVar("_T")

BLAS_THRESHOLD = 20
"""Query count from which flat search uses BLAS (see :func:`configure_faiss`)."""


def configure_faiss(*, blas_threshold: int = BLAS_THRESHOLD, gpu: bool | None = None, device: int = 0) -> None:
    """Apply the process-wide FAISS settings; call once at an entry point, before building indexes.

    * ``faiss.cvar.distance_compute_blas_threshold``: faiss-cpu only uses BLAS for flat search with at least
      128000 queries by default; a query image has ~1000 descriptors, so the threshold is lowered to
      ``blas_threshold`` (identical results, ~4x faster).
    * GPU: with ``gpu`` (default: when :func:`gpu_available`), the GPU executor thread and its
      ``StandardGpuResources`` for GPU ``device`` are created now, at startup, rather than by the first GPU shard.

    Idempotent.
    """
    faiss.cvar.distance_compute_blas_threshold = blas_threshold
    if gpu is None:
        gpu = gpu_available()
    if gpu:
        gpu_resources(device)


def faiss_has_gpu() -> bool:
    """True when the installed faiss was built with GPU support (faiss-gpu, not faiss-cpu)."""
    return hasattr(faiss, "StandardGpuResources")


def gpu_available() -> bool:
    """True when faiss was built with GPU support and sees a device."""
    return faiss_has_gpu() and faiss.get_num_gpus() > 0


def use_gpu(config: IndexConfig) -> bool:
    """Whether shards of this config live on the GPU.

    Raises:
        IndexStateError: ``device='cuda'`` but faiss has no GPU support, sees no GPU, or not GPU ``gpu_id``.
    """
    if config.device == "cuda":
        if not gpu_available():
            raise IndexStateError("IndexConfig.device='cuda' but faiss has no GPU support or sees no GPU "
                                  "(install the `gpu` extra, faiss-gpu, instead of faiss-cpu)")
        if config.gpu_id >= faiss.get_num_gpus():
            raise IndexStateError(f"IndexConfig.gpu_id={config.gpu_id} but faiss sees {faiss.get_num_gpus()} GPU(s)")
    return config.device == "cuda" or (config.device == "auto" and gpu_available())


def index_device(config: IndexConfig) -> str:
    """Where shards of this config live, for logs and labels: ``cpu`` or ``cuda:<gpu_id>``."""
    return f"cuda:{config.gpu_id}" if use_gpu(config) else "cpu"


ResourcesFactory = Callable[[int], Any]
"""Makes the FAISS GPU resources of one device (``faiss.StandardGpuResources()``; a fake in tests)."""


def _standard_resources(device: int) -> Any:
    if not faiss_has_gpu():
        raise IndexStateError("faiss was built without GPU support (install the `gpu` extra, faiss-gpu)")
    return faiss.StandardGpuResources()


def _cpu_to_gpu(resources: Any, device: int, index: faiss.Index) -> Any:
    return faiss.index_cpu_to_gpu(resources, device, index)


def _gpu_to_cpu(index: Any) -> faiss.Index:
    cpu: faiss.Index = faiss.index_gpu_to_cpu(index)
    return cpu


class GpuExecutor:
    """The one thread that owns the FAISS GPU resources and runs every call on a GPU index.

    FAISS GPU indexes and ``StandardGpuResources`` are not thread-safe, even for searches: the ingest thread (add,
    restore) and the query thread (search) must not use them at once. Every GPU index made by :meth:`to_gpu` is a
    :class:`GpuIndex` whose method calls run here, one at a time, on this thread; the resources (one per device)
    are created here too, on first use.

    Args:
        resources_factory: makes the resources of one device (default ``faiss.StandardGpuResources()``).
        cpu_to_gpu: ``(resources, device, cpu_index) -> gpu_index`` (default ``faiss.index_cpu_to_gpu``).
        gpu_to_cpu: ``gpu_index -> cpu_index`` (default ``faiss.index_gpu_to_cpu``).

    The three callables are the seam that lets the tests run this class on a CPU with fakes.
    """

    def __init__(self, resources_factory: ResourcesFactory | None = None,
                 cpu_to_gpu: Callable[[Any, int, faiss.Index], Any] | None = None,
                 gpu_to_cpu: Callable[[Any], faiss.Index] | None = None) -> None:
        self._factory = resources_factory or _standard_resources
        self._cpu_to_gpu = cpu_to_gpu or _cpu_to_gpu
        self._gpu_to_cpu = gpu_to_cpu or _gpu_to_cpu
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faiss-gpu")
        self._resources: dict[int, Any] = {}
        self.thread_id: int = self._pool.submit(threading.get_ident).result()

    def run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``fn(*args, **kwargs)`` on the executor thread (directly when already on it); its result or exception."""
        if threading.get_ident() == self.thread_id:
            return fn(*args, **kwargs)
        return self._pool.submit(fn, *args, **kwargs).result()

    def resources(self, device: int) -> Any:
        """The resources of GPU ``device``, created on the executor thread on first use."""
        return self.run(self._resources_here, device)

    def _resources_here(self, device: int) -> Any:
        if device not in self._resources:
            self._resources[device] = self._factory(device)
        return self._resources[device]

    def to_gpu(self, index: faiss.Index, device: int) -> GpuIndex:
        """A copy of CPU ``index`` on GPU ``device``, whose calls run on this thread."""
        gpu = self.run(lambda: self._cpu_to_gpu(self._resources_here(device), device, index))
        return GpuIndex(gpu, self, device)

    def to_cpu(self, index: GpuIndex) -> faiss.Index:
        """A CPU copy of a GPU index (copied on the executor thread)."""
        return self.run(self._gpu_to_cpu, index.unwrap())

    def close(self) -> None:
        """Stop the thread (pending calls finish first); the resources go with it."""
        self._pool.shutdown(wait=True)
        self._resources.clear()


class GpuIndex:
    """A FAISS GPU index whose method calls run on its :class:`GpuExecutor`'s thread.

    Attributes and methods are those of the wrapped index (``add``, ``search``, ``ntotal``, ...): a method call is
    submitted to the executor and waited for; a plain attribute (``ntotal``, ``d``) is read where it is asked. SWIG
    functions of faiss accept it too (its ``this`` is the wrapped index's), but run on the calling thread: use
    :func:`to_cpu` rather than ``faiss.index_gpu_to_cpu`` on it.
    """

    def __init__(self, index: Any, executor: GpuExecutor, device: int) -> None:
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_executor", executor)
        object.__setattr__(self, "device", device)

    def unwrap(self) -> Any:
        """The wrapped GPU index (use it on the executor thread only)."""
        return self._index

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._index, name)
        if callable(attr) and not name.startswith("_"):
            return functools.partial(self._executor.run, attr)
        return attr

    def __setattr__(self, name: str, value: Any) -> None:
        self._executor.run(setattr, self._index, name, value)


_EXECUTOR_LOCK = threading.Lock()
_EXECUTOR: GpuExecutor | None = None


def gpu_executor() -> GpuExecutor:
    """The process's GPU executor, created on first use (or the one :func:`set_gpu_executor` installed)."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = GpuExecutor()
        return _EXECUTOR


def set_gpu_executor(executor: GpuExecutor | None) -> GpuExecutor | None:
    """Install ``executor`` as the process's GPU executor (None: the next use makes a default one); returns the
    previous one, which the caller closes when done. The seam the CPU tests use with fake resources."""
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        previous, _EXECUTOR = _EXECUTOR, executor
        return previous


def gpu_resources(device: int = 0) -> Any:
    """The FAISS GPU memory pools of GPU ``device``, owned by the GPU executor thread (use them only there).

    Created by :func:`configure_faiss` at startup, or by the first GPU shard when an entry point did not call it.

    Raises:
        IndexStateError: faiss has no GPU support.
    """
    return gpu_executor().resources(device)


def to_device(index: faiss.Index, config: IndexConfig) -> faiss.Index:
    """Move a CPU index to GPU ``config.gpu_id`` when the config asks for it (flat indexes only); the result is a
    :class:`GpuIndex` whose calls run on the GPU executor thread."""
    if not use_gpu(config) or not isinstance(index, faiss.IndexFlat):
        return index
    return cast("faiss.Index", gpu_executor().to_gpu(index, config.gpu_id))  # duck-types faiss.Index


def to_cpu(index: faiss.Index | GpuIndex) -> faiss.Index:
    """A CPU index: ``index`` itself when it is on the CPU, else a copy made on the GPU executor thread."""
    if isinstance(index, GpuIndex):
        return gpu_executor().to_cpu(index)
    if isinstance(index, faiss.IndexFlat | faiss.IndexIVF) or not hasattr(faiss, "index_gpu_to_cpu"):
        return index
    return _gpu_to_cpu(index)


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
    return np.asarray(faiss.serialize_index(to_cpu(index)))


def deserialize(blob: np.ndarray) -> faiss.Index:
    """Inverse of :func:`serialize`."""
    return faiss.deserialize_index(np.ascontiguousarray(blob, dtype=np.uint8))
