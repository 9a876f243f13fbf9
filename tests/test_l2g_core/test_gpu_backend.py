"""The GPU paths of the index backend and the timing helper, on the CPU through their seams (a fake resources
factory and fake GPU copies around real CPU flat indexes), and on a real GPU when there is one (skipped without)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import faiss
import numpy as np
import pytest
import torch

from l2g_core.config import IndexConfig
from l2g_core.errors import IndexStateError
from l2g_core.index import backend
from l2g_core.timing import stage_clock, synchronize
from tests import _harness


class _Fakes:
    """Records which thread made resources and ran index calls, and for which device."""

    def __init__(self) -> None:
        self.resources_made: list[tuple[int, int]] = []  # (device, thread)
        self.copies: list[int] = []  # device of each cpu-to-gpu copy
        self.calls: list[tuple[str, int]] = []

    def resources(self, device: int) -> Any:
        self.resources_made.append((device, threading.get_ident()))
        return object()

    def cpu_to_gpu(self, resources: Any, device: int, index: faiss.Index) -> Any:
        self.copies.append(device)
        fakes = self

        class Recording:
            def __init__(self) -> None:
                self.inner = index

            def add(self, x: np.ndarray) -> None:
                fakes.calls.append(("add", threading.get_ident()))
                self.inner.add(x)

            def search(self, q: np.ndarray, k: int) -> Any:
                fakes.calls.append(("search", threading.get_ident()))
                return self.inner.search(q, k)

            @property
            def ntotal(self) -> int:
                return int(self.inner.ntotal)

        return Recording()


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Fakes]:
    f = _Fakes()
    executor = backend.GpuExecutor(f.resources, f.cpu_to_gpu, lambda index: index.inner)
    previous = backend.set_gpu_executor(executor)
    monkeypatch.setattr(backend, "gpu_available", lambda: True)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 2)
    yield f
    backend.set_gpu_executor(previous)
    executor.close()


def _vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_gpu_calls_run_on_one_executor_thread(fakes: _Fakes) -> None:
    """Adds from an "ingest" thread and searches from a "query" thread all run on the executor's thread."""
    config = IndexConfig(local_dim=8, global_dim=4, device="cuda", gpu_id=1)
    index = backend.to_device(backend.new_flat(8), config)
    assert isinstance(index, backend.GpuIndex) and index.device == 1
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            for i in range(5):
                index.add(_vectors(4, seed=i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def query() -> None:
        try:
            for _ in range(5):
                index.search(_vectors(2, seed=9), 3)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ingest), threading.Thread(target=query)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    executor = backend.gpu_executor()
    assert {thread for _, thread in fakes.calls} == {executor.thread_id}
    assert len(fakes.calls) == 10 and index.ntotal == 20
    assert fakes.resources_made == [(1, executor.thread_id)]  # one resources object, made on that thread
    assert fakes.copies == [1]  # the device comes from IndexConfig.gpu_id, not a hard-coded 0


def test_resources_are_made_once_per_device(fakes: _Fakes) -> None:
    backend.configure_faiss(gpu=True, device=0)
    backend.to_device(backend.new_flat(8), IndexConfig(local_dim=8, global_dim=4, device="cuda", gpu_id=0))
    backend.gpu_resources(1)
    assert [device for device, _ in fakes.resources_made] == [0, 1]


def test_serialize_copies_a_gpu_index_back(fakes: _Fakes) -> None:
    config = IndexConfig(local_dim=8, global_dim=4, device="cuda")
    index = backend.to_device(backend.new_flat(8), config)
    index.add(_vectors(6))
    restored = backend.deserialize(backend.serialize(index))
    assert isinstance(restored, faiss.IndexFlat) and restored.ntotal == 6
    assert isinstance(backend.to_cpu(index), faiss.IndexFlat)


def test_cpu_and_compressed_indexes_stay_on_the_cpu(fakes: _Fakes) -> None:
    cpu = backend.new_flat(8)
    assert backend.to_device(cpu, IndexConfig(local_dim=8, global_dim=4, device="cpu")) is cpu
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(8), 8, 1, faiss.METRIC_INNER_PRODUCT)
    assert backend.to_device(ivf, IndexConfig(local_dim=8, global_dim=4, device="cuda")) is ivf
    assert backend.index_device(IndexConfig(local_dim=8, global_dim=4, device="cuda", gpu_id=1)) == "cuda:1"
    assert fakes.copies == []


def test_device_cuda_without_gpu_support_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend, "gpu_available", lambda: False)
    with pytest.raises(IndexStateError, match="gpu"):
        backend.use_gpu(IndexConfig(local_dim=8, global_dim=4, device="cuda"))
    assert backend.index_device(IndexConfig(local_dim=8, global_dim=4, device="auto")) == "cpu"


def test_gpu_id_beyond_the_visible_gpus_fails(fakes: _Fakes) -> None:
    with pytest.raises(IndexStateError, match="gpu_id=2"):
        backend.use_gpu(IndexConfig(local_dim=8, global_dim=4, device="cuda", gpu_id=2))


def test_gpu_id_is_validated() -> None:
    with pytest.raises(Exception, match="gpu_id"):
        IndexConfig(local_dim=8, global_dim=4, gpu_id=-1)


def test_executor_reentrant_call_and_errors() -> None:
    executor = backend.GpuExecutor(lambda device: object())
    try:
        assert executor.run(lambda: executor.run(threading.get_ident)) == executor.thread_id
        with pytest.raises(ZeroDivisionError):
            executor.run(lambda: 1 // 0)
    finally:
        executor.close()


def test_sync_helper_is_a_no_op_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[Any] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: called.append(device))
    assert not synchronize("cpu") and not synchronize(None) and not synchronize(torch.device("cpu"))
    assert isinstance(stage_clock("cpu"), float)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert synchronize("cuda:0") and called == ["cuda:0"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not synchronize("cuda")


@pytest.mark.gpu
@_harness.skip_unless(backend.gpu_available(), _harness.Kind.GPU, "needs faiss-gpu and a CUDA device")
def test_real_gpu_index_matches_cpu() -> None:
    """On a real GPU: the flat index searches like the CPU one, from two threads at once."""
    config = IndexConfig(local_dim=8, global_dim=4, device="cuda")
    gpu = backend.to_device(backend.new_flat(8), config)
    cpu = backend.new_flat(8)
    data = _vectors(500)
    gpu.add(data)
    cpu.add(data)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(gpu.search(_vectors(5, seed=3), 4)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, expected = cpu.search(_vectors(5, seed=3), 4)
    assert len(results) == 4 and all(np.array_equal(ids, expected) for _, ids in results)
    assert backend.deserialize(backend.serialize(gpu)).ntotal == 500
    assert synchronize("cuda")
