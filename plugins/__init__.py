"""plugins: feature extractors that turn decoded RGB frames into :class:`l2g_core.FrameFeatures`.

``get_extractor(name, **options)`` builds one by registry name or preset (the options are validated by the
extractor's :class:`ExtractorOptions` model); third parties register theirs through the ``l2g_stream.extractors``
entry-point group.
"""

from plugins.base import Extractor, RGBBatch, resolve_device, validate_batch
from plugins.errors import ExtractorInputError, PluginError, UnknownExtractorError, WeightsError
from plugins.options import ExtractorOptions
from plugins.presets import DEFAULT_EXTRACTOR, PRESETS, Preset
from plugins.registry import ENTRY_POINT_GROUP, available, extractor_class, get_extractor, register

__all__ = [
    "DEFAULT_EXTRACTOR",
    "ENTRY_POINT_GROUP",
    "PRESETS",
    "Extractor",
    "ExtractorInputError",
    "ExtractorOptions",
    "PluginError",
    "Preset",
    "RGBBatch",
    "UnknownExtractorError",
    "WeightsError",
    "available",
    "extractor_class",
    "get_extractor",
    "register",
    "resolve_device",
    "validate_batch",
]
