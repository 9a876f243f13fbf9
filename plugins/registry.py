"""Extractors by name: built-ins registered here, third-party ones through the ``l2g_stream.extractors``
entry-point group (``[project.entry-points."l2g_stream.extractors"] myfeat = "mypkg.module:MyExtractor"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from plugins.base import Extractor
from plugins.errors import PluginError, UnknownExtractorError
from plugins.options import ExtractorOptions
from plugins.presets import PRESETS, Preset

__all__ = ["ENTRY_POINT_GROUP", "available", "extractor_class", "get_extractor", "preset_options", "register"]

ENTRY_POINT_GROUP = "l2g_stream.extractors"

# Built-ins: name -> "module:Class", imported lazily so that ``toy`` never imports torch.
_BUILTIN: dict[str, str] = {
    "toy": "plugins.toy:ToyExtractor",
    "xfeat": "plugins.xfeat:XFeatExtractor",
    "efficientnet-gem": "plugins.efficientnet:EfficientNetGeMExtractor",
    "rootsift": "plugins.rootsift:RootSiftExtractor",
    "aliked": "plugins.aliked:AlikedExtractor",
    "vitgal": "plugins.vitgal:ViTGaLExtractor",
    "effnet-unified": "plugins.unified:EffNetUnifiedExtractor",
}
_REGISTERED: dict[str, type[Extractor]] = {}


def register(name: str) -> Callable[[type[Extractor]], type[Extractor]]:
    """Class decorator that registers an extractor under ``name`` at import time (for tests and notebooks)."""

    def wrap(cls: type[Extractor]) -> type[Extractor]:
        if not (isinstance(cls, type) and issubclass(cls, Extractor)):
            raise PluginError(f"{cls!r} is not an Extractor subclass")
        _REGISTERED[name] = cls
        return cls

    return wrap


def _load(target: str) -> type[Extractor]:
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    if not (isinstance(cls, type) and issubclass(cls, Extractor)):
        raise PluginError(f"{target} is not an Extractor subclass")
    return cls


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Names of every extractor that :func:`get_extractor` accepts (built-ins, registered, entry points)."""
    return sorted(set(_BUILTIN) | set(_REGISTERED) | set(_entry_points()))


def extractor_class(name: str) -> type[Extractor]:
    """The class registered under ``name``.

    Raises:
        UnknownExtractorError: nothing is registered under that name (the message lists what is).
    """
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        return _load(_BUILTIN[name])
    eps = _entry_points()
    if name in eps:
        cls = eps[name].load()
        if not (isinstance(cls, type) and issubclass(cls, Extractor)):
            raise PluginError(f"entry point {name!r} ({eps[name].value}) is not an Extractor subclass")
        return cls
    raise UnknownExtractorError(f"no extractor named {name!r}; available: {', '.join(available())}")


def get_extractor(name: str, **options: Any) -> Extractor:
    """A new, not yet set up extractor: ``name`` is a registry name or a preset (see :mod:`plugins.presets`).

    ``options`` (``device`` included) override the preset's; the result is validated by the extractor's options
    model (:attr:`Extractor.Options`). Raises :class:`UnknownExtractorError`, or :class:`PluginError` on unknown
    keys or bad values.
    """
    if name in PRESETS:
        preset = PRESETS[name]
        name, options = preset.extractor, {**preset.options, **options}
    cls = extractor_class(name)
    try:
        return cls.create(options)
    except TypeError as exc:  # a subclass whose constructor does not take (options, device=)
        raise PluginError(f"bad options for extractor {name!r}: {exc}") from exc


def preset_options(preset: Preset) -> ExtractorOptions:
    """The preset's options as its extractor's options model (imports the extractor's module).

    Raises:
        PluginError: the preset names an unknown option or a bad value.
    """
    return extractor_class(preset.extractor).parse_options(preset.options)
