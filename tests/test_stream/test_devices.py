"""Startup device checks, the devices log line and the ``l2g_build_info`` device labels (fake probes, CPU only)."""

from __future__ import annotations

import pytest

from l2g_core.config import IndexConfig, RetrievalConfig
from stream.devices import DeviceProbe, check_devices, resolve_devices
from stream.errors import ConfigurationError
from stream.metrics import StreamMetrics
from stream.settings import Settings
from stream.store import PartitionedIndex

CPU_ONLY = DeviceProbe(faiss_gpu=False, faiss_gpus=0, torch_cuda=False)
GPU = DeviceProbe(faiss_gpu=True, faiss_gpus=1, torch_cuda=True)


def test_index_cuda_with_faiss_cpu_fails_loudly() -> None:
    with pytest.raises(ConfigurationError, match="no GPU support"):
        check_devices(Settings(index={"device": "cuda"}), DeviceProbe(faiss_gpu=False, faiss_gpus=0, torch_cuda=True))
    with pytest.raises(ConfigurationError, match="gpu_id=1"):
        check_devices(Settings(index={"device": "cuda", "gpu_id": 1}), GPU)
    check_devices(Settings(index={"device": "cuda"}), GPU)
    check_devices(Settings(), CPU_ONLY)  # auto falls back quietly


def test_torch_cuda_settings_without_cuda_fail() -> None:
    with pytest.raises(ConfigurationError, match="extractor"):
        check_devices(Settings(extractor={"options": {"device": "cuda:0"}}), CPU_ONLY)
    with pytest.raises(ConfigurationError, match="stage 2"):
        check_devices(Settings(index={"retrieval": {"device": "cuda"}}), CPU_ONLY)


def test_index_device_and_gpu_id_come_from_settings() -> None:
    settings = Settings(index={"device": "cuda", "gpu_id": 3})
    index = PartitionedIndex.from_settings(settings.index, extractor="toy", options={}, local_dim=8, global_dim=4)
    assert (index.config.device, index.config.gpu_id) == ("cuda", 3)
    assert Settings().index.device == "auto"


def test_resolved_devices_label_build_info() -> None:
    config = IndexConfig(local_dim=8, global_dim=4, gpu_id=0)
    on_gpu = resolve_devices("cuda", config, RetrievalConfig(), GPU)
    assert on_gpu.labels() == {"extract_device": "cuda", "index_device": "cuda:0", "stage2_device": "cuda"}
    on_cpu = resolve_devices("cpu", config, RetrievalConfig(), CPU_ONLY)
    assert on_cpu.describe() == "devices: extraction cpu, index cpu, stage 2 cpu"
    metrics = StreamMetrics()
    metrics.build_info.info({"version": "0", "extractor": "toy", "worker": "w", **on_gpu.labels()})
    assert metrics.value("l2g_build_info", {"index_device": "cuda:0", "stage2_device": "cuda"}) == 1.0
