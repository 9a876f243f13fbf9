"""Checks of the free-form option maps of the settings, which pydantic cannot check by itself: ``index.retrieval``
(the fields of :class:`l2g_core.RetrievalConfig`), ``extractor.options`` (the extractor's options model) and
``kafka.consumer_extra`` / ``producer_extra`` (kafka-python's configuration keys).

Run by :meth:`stream.worker.Worker.open` (so by ``l2g-stream worker`` and every embedding of a worker) and by
``--print-settings``, so that a typo such as
``L2G_INDEX__RETRIEVAL='{"shortlst": 300}'`` fails at once, naming the key and the closest valid one, instead of
when the first query or chunk arrives. This module reads the settings object only (never the environment).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from stream.errors import ConfigurationError

if TYPE_CHECKING:
    from stream.settings import Settings

__all__ = ["check_settings", "extractor_option_keys", "retrieval_keys", "unknown_keys"]


def unknown_keys(where: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Raise when ``given`` holds a key that ``valid`` does not.

    Raises:
        ConfigurationError: ``<where>: unknown key 'x' (did you mean 'y'?); valid keys: ...``.
    """
    allowed = sorted(set(valid))
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(allowed)}")


def retrieval_keys() -> list[str]:
    """The keys of ``index.retrieval``: the fields of :class:`l2g_core.RetrievalConfig`."""
    from l2g_core import RetrievalConfig

    return [f.name for f in dataclasses.fields(RetrievalConfig)]


def extractor_option_keys(name: str) -> list[str]:
    """The keys of ``extractor.options`` for the extractor (or preset) ``name``, ``device`` included.

    Raises:
        ConfigurationError: no extractor or preset has that name, or its module cannot be imported.
    """
    from plugins import PRESETS, PluginError, extractor_class

    target = PRESETS[name].extractor if name in PRESETS else name
    try:
        return [*extractor_class(target).Options.model_fields, "device"]
    except (PluginError, ImportError) as exc:
        raise ConfigurationError(f"extractor.name: {exc}") from exc


def _check_extractor(name: str, options: Mapping[str, Any]) -> None:
    from plugins import PRESETS, PluginError, extractor_class
    from plugins.base import check_device

    unknown_keys(f"extractor.options of {name!r}", options, extractor_option_keys(name))
    target, merged = name, dict(options)
    if name in PRESETS:
        target, merged = PRESETS[name].extractor, {**PRESETS[name].options, **merged}
    try:
        check_device(merged.pop("device", None))
        extractor_class(target).parse_options(merged)
    except PluginError as exc:
        raise ConfigurationError(f"extractor.options: {exc}") from exc


def _check_kafka_extra(settings: Settings) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    unknown_keys("kafka.consumer_extra", settings.kafka.consumer_extra, KafkaConsumer.DEFAULT_CONFIG)
    unknown_keys("kafka.producer_extra", settings.kafka.producer_extra, KafkaProducer.DEFAULT_CONFIG)


def check_settings(settings: Settings, *, extractor: bool = True) -> None:
    """Check the free-form maps of ``settings`` (see the module docstring); imports neither torch nor FAISS.

    Args:
        settings: what to check.
        extractor: also check ``extractor.options`` against the registered extractor (False when the caller builds
            its extractor some other way, e.g. a worker given an ``extractor_factory``).

    Raises:
        ConfigurationError: an unknown key (with the closest valid one and the list) or a bad value.
    """
    unknown_keys("index.retrieval", settings.index.retrieval, retrieval_keys())
    settings.index.retrieval_config()
    if extractor:
        _check_extractor(settings.extractor.name, settings.extractor.options)
    _check_kafka_extra(settings)
