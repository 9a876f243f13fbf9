"""Which device runs extraction, the index and stage 2: checked before anything starts, logged once and exposed
as labels of ``l2g_build_info``.

A setting that asks for CUDA where there is none fails loudly at startup (:func:`check_devices`): in particular
``index.device=cuda`` with faiss-cpu installed (the ``cpu`` extra) instead of faiss-gpu, which would otherwise
leave the index on the CPU without a word.
"""

from __future__ import annotations

from dataclasses import dataclass

from l2g_core.config import IndexConfig, RetrievalConfig
from stream.errors import ConfigurationError
from stream.settings import Settings

__all__ = ["DeviceProbe", "Devices", "check_devices", "resolve_devices"]


@dataclass(frozen=True)
class DeviceProbe:
    """What this machine offers (a fake in tests).

    Attributes:
        faiss_gpu: the installed faiss was built with GPU support (faiss-gpu).
        faiss_gpus: GPUs faiss sees (0 without GPU support).
        torch_cuda: torch sees a CUDA device.
    """

    faiss_gpu: bool
    faiss_gpus: int
    torch_cuda: bool

    @classmethod
    def detect(cls) -> DeviceProbe:
        """Probe faiss and torch."""
        import faiss
        import torch

        from l2g_core.index.backend import faiss_has_gpu

        has = faiss_has_gpu()
        return cls(faiss_gpu=has, faiss_gpus=int(faiss.get_num_gpus()) if has else 0,
                   torch_cuda=bool(torch.cuda.is_available()))


def _wants_cuda(device: object) -> bool:
    return isinstance(device, str) and device.startswith("cuda")


def check_devices(settings: Settings, probe: DeviceProbe | None = None) -> None:
    """Refuse settings that ask for CUDA where there is none.

    Raises:
        ConfigurationError: ``index.device=cuda`` with a faiss without GPU support (faiss-cpu) or that sees no GPU
            or not GPU ``index.gpu_id``; ``extractor.options.device`` or ``index.retrieval.device`` ``cuda`` while
            torch sees no CUDA device.
    """
    p = probe or DeviceProbe.detect()
    index = settings.index
    if index.device == "cuda":
        if not p.faiss_gpu:
            raise ConfigurationError(
                "index.device=cuda but the installed faiss has no GPU support (faiss-cpu): install the `gpu` extra "
                "(faiss-gpu; `make setup FAISS=gpu`, or the image's `gpu` target) or set index.device=cpu")
        if index.gpu_id >= p.faiss_gpus:
            raise ConfigurationError(f"index.device=cuda, index.gpu_id={index.gpu_id}, but faiss sees "
                                     f"{p.faiss_gpus} GPU(s)")
    if not p.torch_cuda:
        if _wants_cuda(settings.extractor.options.get("device")):
            raise ConfigurationError(f"extractor.options.device={settings.extractor.options['device']} but torch "
                                     "sees no CUDA device (CPU build of torch, or no GPU visible)")
        if _wants_cuda(settings.index.retrieval.get("device")):
            raise ConfigurationError(f"index.retrieval.device={settings.index.retrieval['device']} (stage 2) but "
                                     "torch sees no CUDA device (CPU build of torch, or no GPU visible)")


@dataclass(frozen=True)
class Devices:
    """The devices of one worker, resolved."""

    extraction: str
    index: str
    stage2: str

    def labels(self) -> dict[str, str]:
        """Labels of ``l2g_build_info``."""
        return {"extract_device": self.extraction, "index_device": self.index, "stage2_device": self.stage2}

    def describe(self) -> str:
        """The startup log line's text."""
        return f"devices: extraction {self.extraction}, index {self.index}, stage 2 {self.stage2}"


def resolve_devices(extraction: str, index: IndexConfig, retrieval: RetrievalConfig,
                    probe: DeviceProbe | None = None) -> Devices:
    """The devices that actually run: ``extraction`` is the extractor's resolved device; the index's follows
    ``IndexConfig.device`` / ``gpu_id`` (``auto``: the GPU when faiss has one), stage 2's ``RetrievalConfig.device``
    (``auto``: CUDA when torch sees it)."""
    p = probe or DeviceProbe.detect()
    on_gpu = index.device == "cuda" or (index.device == "auto" and p.faiss_gpu and p.faiss_gpus > 0)
    index_device = f"cuda:{index.gpu_id}" if on_gpu else "cpu"
    stage2 = retrieval.device if retrieval.device != "auto" else ("cuda" if p.torch_cuda else "cpu")
    return Devices(extraction=str(extraction), index=index_device, stage2=stage2)
