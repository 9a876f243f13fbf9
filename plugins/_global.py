"""The ``global_from`` option shared by the local-feature extractors: their own global descriptor, or the one of
``efficientnet-gem`` computed on the same frames."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugins.errors import PluginError

if TYPE_CHECKING:
    from plugins.efficientnet import EfficientNetGeMExtractor

__all__ = ["global_source"]


def global_source(global_from: str, own: str, global_options: dict[str, Any] | None,
                  device: str | None) -> EfficientNetGeMExtractor | None:
    """``None`` for the extractor's own global descriptor (``global_from == own``), else an (unset-up)
    ``efficientnet-gem`` built with ``global_options`` on the same device request."""
    if global_from == own:
        if global_options:
            raise PluginError(f"global_options apply to global_from='efficientnet', not {own!r}")
        return None
    if global_from not in ("efficientnet", "efficientnet-gem"):
        raise PluginError(f"global_from must be {own!r} or 'efficientnet', got {global_from!r}")
    from plugins.efficientnet import EfficientNetGeMExtractor

    try:
        return EfficientNetGeMExtractor(**(global_options or {}), device=device)
    except TypeError as exc:
        raise PluginError(f"bad global_options for efficientnet-gem: {exc}") from exc
