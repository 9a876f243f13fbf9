"""The ``global_from`` option shared by the local-feature extractors: their own global descriptor, or the one of
``efficientnet-gem`` computed on the same frames."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from plugins.efficientnet import EfficientNetGeMExtractor, EfficientNetGeMOptions
from plugins.options import ExtractorOptions

__all__ = ["GlobalFromOptions", "global_source"]


class GlobalFromOptions(ExtractorOptions):
    """Options of an extractor whose global descriptor is its own or ``efficientnet-gem``'s.

    A subclass redeclares ``global_from`` as ``Literal[<own name>, "efficientnet"]`` with its own name as the
    default. ``"efficientnet-gem"`` is accepted for ``"efficientnet"``; with it, ``global_options`` are the options
    of ``efficientnet-gem`` (validated by its model, defaults filled in; its device is the extractor's), and with
    the own global descriptor ``global_options`` must be empty (they are ``None`` then).

    Attributes:
        global_from: where the global descriptor comes from (a feature option).
        global_options: ``efficientnet-gem`` options (feature options, weights by their sha256).
    """

    global_from: str
    global_options: EfficientNetGeMOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def _global_part(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        own = cls.model_fields["global_from"].default
        data = dict(data)
        source = data.get("global_from", own)
        if source == "efficientnet-gem":
            source = data["global_from"] = "efficientnet"
        if source == own:
            if data.get("global_options"):
                raise ValueError(f"global_options apply to global_from='efficientnet', not {own!r}")
            data["global_options"] = None
        elif source == "efficientnet" and data.get("global_options") is None:
            data["global_options"] = {}
        return data


def global_source(options: GlobalFromOptions, device: str | None) -> EfficientNetGeMExtractor | None:
    """``None`` for the extractor's own global descriptor, else an (unset-up) ``efficientnet-gem`` built from
    ``options.global_options`` on the same device request."""
    if options.global_options is None:
        return None
    return EfficientNetGeMExtractor(options.global_options, device=device)
