#!/usr/bin/env python3
"""Write the JSON Schema of every wire message (``stream.messages``) to ``deploy/schemas/``, for clients in
other languages.

The committed files are this script's output; ``tests/test_deploy/test_schemas.py`` fails while they differ
(CI runs it). After changing ``stream/messages.py`` run::

    .venv/bin/python deploy/gen_schemas.py           # rewrite deploy/schemas/*.schema.json
    .venv/bin/python deploy/gen_schemas.py --check   # exit 1 when a file is stale or missing

Messages clients produce (``video_chunk``, ``query``) are described as the service accepts them (pydantic's
validation mode); the others as the service writes them (serialization mode). Each schema's ``$id`` is the
message's CloudEvents ``ce_dataschema`` header, ``urn:l2g:<kind>:<version>``. Byte fields are base64 strings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pydantic import BaseModel  # noqa: E402

from stream.messages import (  # noqa: E402
    SCHEMA_VERSION,
    CandidatePartial,
    DeadLetter,
    Query,
    QueryResult,
    VideoChunk,
)

OUT_DIR = Path(__file__).resolve().parent / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"
# (model, the mode it crosses the wire in from a client's point of view)
MESSAGES: tuple[tuple[type[BaseModel], Literal["validation", "serialization"]], ...] = (
    (VideoChunk, "validation"),
    (Query, "validation"),
    (CandidatePartial, "serialization"),
    (QueryResult, "serialization"),
    (DeadLetter, "serialization"),
)


def kind_of(model: type[BaseModel]) -> str:
    default = model.model_fields["kind"].default
    assert isinstance(default, str), model
    return default


def schema_of(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, Any]:
    kind = kind_of(model)
    schema = model.model_json_schema(mode=mode)
    return {"$schema": DRAFT, "$id": f"urn:l2g:{kind}:{SCHEMA_VERSION}", **schema}


def render() -> dict[str, str]:
    """``{file name: JSON text}`` of every schema."""
    return {f"{kind_of(model)}.schema.json": json.dumps(schema_of(model, mode), indent=2, sort_keys=True) + "\n"
            for model, mode in MESSAGES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed schema differs")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"default: {OUT_DIR}")
    args = parser.parse_args(argv)
    files = render()
    if args.check:
        stale = sorted(name for name, text in files.items()
                       if not (args.out / name).is_file() or (args.out / name).read_text(encoding="utf-8") != text)
        extra = sorted(p.name for p in args.out.glob("*.schema.json") if p.name not in files)
        for name in stale + extra:
            print(f"{args.out / name} is stale: run .venv/bin/python deploy/gen_schemas.py", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
