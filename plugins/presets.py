"""Named presets: an extractor plus the settings that suit a use (``get_extractor("xfeat-fast")``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_EXTRACTOR", "PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """An extractor name and its options.

    Attributes:
        extractor: registry name.
        options: options of the extractor's options model (:attr:`plugins.base.Extractor.Options`), which
            validates them together with the caller's overrides in ``get_extractor``; see
            :func:`plugins.registry.preset_options`.
        description: one line for ``l2g-stream extractors``.
    """

    extractor: str
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""


PRESETS: dict[str, Preset] = {
    "xfeat-fast": Preset("xfeat", {"max_keypoints": 256, "max_side": 480}, "XFeat, 256 keypoints, 480 px: CPU ingest"),
    "xfeat-quality": Preset(
        "xfeat", {"max_keypoints": 1024, "max_side": 960}, "XFeat, 1024 keypoints, 960 px: GPU, small objects"
    ),
    "xfeat-effnet": Preset(
        "xfeat", {"global_from": "efficientnet"}, "XFeat locals + EfficientNet-Lite0 GeM global (1280-d)"
    ),
    "xfeat-effnet-320": Preset(
        "xfeat", {"global_from": "efficientnet", "global_options": {"max_side": 320}},
        "XFeat locals + EfficientNet-Lite0 GeM global at 320 px: the default",
    ),
    "rootsift-1k": Preset("rootsift", {"max_keypoints": 1000}, "OpenCV SIFT + RootSIFT, 1000 keypoints, CPU"),
    "toy-test": Preset("toy", {"max_features": 128}, "deterministic grid patches, for tests"),
}

#: The extractor a worker runs unless configured otherwise (``ExtractorSettings.name``), and the benchmarks' default.
#: Chosen by measurement (docs/benchmarks.md, "The default extractor"): with EfficientNet's global at 320 px, L2G
#: leads or ties every baseline on every video and landmark metric, at 1.9x XFeat-alone's extraction cost (the
#: 512-px global of ``xfeat-effnet`` costs 2.8x for +0.7 mAP).
DEFAULT_EXTRACTOR = "xfeat-effnet-320"
