"""Reading a settings file (YAML, JSON or TOML) into a mapping; :mod:`stream.settings` decides which file."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml

from stream.errors import ConfigurationError

__all__ = ["read_settings_file"]


def read_settings_file(path: Path) -> dict[str, Any]:
    """The top-level mapping of the settings file ``path`` (by its suffix: ``.yaml``/``.yml``, ``.json``, ``.toml``;
    an empty file is ``{}``).

    Raises:
        ConfigurationError: unreadable, another suffix, invalid syntax, or not a mapping at the top level.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read settings file {path}: {exc}") from exc
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigurationError(f"settings file {path} must end in .yaml, .yml, .json or .toml")
    except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"settings file {path} is not valid {suffix[1:]}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigurationError(f"settings file {path} must hold a mapping at the top level")
    return data
