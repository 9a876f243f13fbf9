"""``l2g-stream extractors``: the registered extractors and presets, with the sizes of a default instance and the
option keys each one takes."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["cmd_extractors", "describe_extractors"]


def _describe(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One extractor (or preset) built with ``options`` (cheap: no weights are loaded): its real sizes, or why it
    cannot be built that way."""
    from plugins import extractor_class, get_extractor

    row: dict[str, Any] = {"name": name, "local_dim": None, "global_dim": None, "status": "ok", "options": {}}
    try:
        cls = extractor_class(name)
        row["options"] = {key: (None if info.is_required() else info.get_default(call_default_factory=True))
                          for key, info in cls.Options.model_fields.items()}
        row["required"] = sorted(key for key, info in cls.Options.model_fields.items() if info.is_required())
    except Exception as exc:  # a built-in whose module is missing or broken, or a bad entry point
        row["status"] = f"unavailable: {type(exc).__name__}: {exc}"
        return row
    try:
        ext = get_extractor(name, **(options or {}), device="cpu")
    except Exception as exc:  # any construction failure is reported, not raised
        row["status"] = f"needs options: {exc}"
        return row
    row["local_dim"], row["global_dim"] = ext.local_dim, ext.global_dim
    return row


def describe_extractors() -> dict[str, Any]:
    """Every registered extractor and preset as JSON-able rows (see :func:`_describe`)."""
    from plugins import PRESETS, available

    extractors = [_describe(name) for name in available()]
    presets = []
    for name, preset in sorted(PRESETS.items()):
        row = _describe(preset.extractor, preset.options)
        presets.append({"name": name, "extractor": preset.extractor, "options": preset.options,
                        "description": preset.description, "local_dim": row["local_dim"],
                        "global_dim": row["global_dim"], "status": row["status"]})
    return {"extractors": extractors, "presets": presets}


def _dim(value: int | None) -> str:
    return "?" if value is None else str(value)


def cmd_extractors(args: argparse.Namespace) -> int:
    """Print the extractors and presets (a table, or JSON with ``--json``)."""
    data = describe_extractors()
    if args.json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    print(f"{'name':<18} {'local':>5} {'global':>6}  status (sizes with the default options)")
    for row in data["extractors"]:
        print(f"{row['name']:<18} {_dim(row['local_dim']):>5} {_dim(row['global_dim']):>6}  {row['status']}"[:200])
    print("\npresets:")
    for p in data["presets"]:
        print(f"  {p['name']:<16} {_dim(p['local_dim']):>5} {_dim(p['global_dim']):>6}  -> {p['extractor']} "
              f"{p['options']}  {p['description']}")
    print("\noptions (extractor.options / L2G_EXTRACTOR__OPTIONS; default in brackets, * required):")
    for row in data["extractors"]:
        if row["options"]:
            keys = ", ".join(f"{k}*" if k in row.get("required", []) else f"{k} [{v}]"
                             for k, v in row["options"].items())
            print(f"  {row['name']:<16} {keys}")
    return 0
