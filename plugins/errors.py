"""Exceptions of the ``plugins`` package: one root, :class:`PluginError`."""

from __future__ import annotations

__all__ = ["ExtractorInputError", "PluginError", "UnknownExtractorError", "WeightsError"]


class PluginError(Exception):
    """Root of every error raised by ``plugins``."""


class ExtractorInputError(PluginError, ValueError):
    """A batch handed to an extractor is unusable (shape, dtype, size, emptiness)."""


class UnknownExtractorError(PluginError, KeyError):
    """No extractor is registered under the requested name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown extractor"


class WeightsError(PluginError, FileNotFoundError):
    """Weights are missing or unreadable; extractors never fall back to a random initialisation."""
