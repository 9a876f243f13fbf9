"""``deploy/schemas``: one JSON Schema per wire message, generated from ``stream.messages`` and up to date; each
``$id`` is the message's ``ce_dataschema`` header, and encoded messages validate against their schema (checked
with a small validator of the keywords pydantic emits: no jsonschema dependency)."""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest

from stream import messages
from stream.envelope import encode_message, header
from stream.messages import DeadLetter, Query, VideoChunk
from tests.test_deploy.support import DEPLOY, load_module

SCHEMAS = DEPLOY / "schemas"
_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
                          "integer": int, "number": (int, float)}


@pytest.fixture(scope="module")
def gen() -> Any:
    return load_module(DEPLOY / "gen_schemas.py", "l2g_gen_schemas")


def _schema(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SCHEMAS / f"{kind}.schema.json").read_text(encoding="utf-8"))
    return data


def errors(value: Any, schema: dict[str, Any], root: dict[str, Any], path: str = "$") -> list[str]:
    """Violations of ``schema`` by ``value``: type, const, enum, properties, required, items, anyOf, $ref, min/max."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return errors(value, root["$defs"][name], root, path)
    if "anyOf" in schema:
        options = [errors(value, option, root, path) for option in schema["anyOf"]]
        return [] if any(not o for o in options) else [f"{path}: matches no anyOf option: {options}"]
    out: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        ok = isinstance(value, _TYPES[kind]) and not (kind in {"integer", "number"} and isinstance(value, bool))
        if not ok:
            return [f"{path}: {value!r} is not {kind}"]
    if "const" in schema and value != schema["const"]:
        out.append(f"{path}: {value!r} != const {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{path}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{path}: {value} > {schema['maximum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{path}: missing {name}" for name in schema.get("required", []) if name not in value]
        for key, item in value.items():
            if key in props:
                out += errors(item, props[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties") is False:
                out.append(f"{path}: unexpected property {key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += errors(item, schema["items"], root, f"{path}[{i}]")
    return out


def test_schemas_are_generated(gen: Any) -> None:
    for name, text in gen.render().items():
        assert (SCHEMAS / name).read_text(encoding="utf-8") == text, (
            f"deploy/schemas/{name} is stale: run .venv/bin/python deploy/gen_schemas.py")
    assert gen.main(["--check"]) == 0
    assert {p.name for p in SCHEMAS.glob("*.schema.json")} == set(gen.render())


def test_every_wire_message_has_a_schema(gen: Any) -> None:
    wire = set(typing.get_args(messages.Message))
    assert {model for model, _ in gen.MESSAGES} == wire


SAMPLES = [
    VideoChunk(camera_id="gate-1", sequence=3, first_frame=0, start_time=1_700_000_000.0, fps=25.0, data=b"\x00mp4"),
    VideoChunk(camera_id="gate-1", sequence=4, first_frame=250, start_time=1_700_000_010.0, fps=25.0,
               ref="file:///data/blobs/gate-1/4.mp4"),
    Query(query_id="q-1", image=b"\xff\xd8jpeg", k=5, cameras=["gate-1"], time_from=0.0, deadline=1e9),
    DeadLetter(stage="ingest", reason="corrupt_video", error_class="BadInputError", error_message="no moov atom",
               original_topic="l2g.video", original_partition=2, original_offset=41, original_key=b"gate-1",
               original_value=b"\x00\x01", original_size=2, worker_id="w1", failed_at=1.0),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.kind)
def test_encoded_messages_validate(message: Any) -> None:
    out = encode_message(message, source="test")
    schema = _schema(message.kind)
    assert header(out.headers, "ce_dataschema") == schema["$id"]
    value = json.loads(out.value)
    assert errors(value, schema, schema) == []
    assert errors({**value, "surprise": 1}, schema, schema), "extra properties must be rejected"
    first_required = schema["required"][0]
    assert errors({k: v for k, v in value.items() if k != first_required}, schema, schema)
    assert errors({**value, "kind": "other"}, schema, schema)


def test_base64_fields_are_marked() -> None:
    prop = _schema("query")["properties"]["image"]
    assert {"type": "string", "contentEncoding": "base64"} in prop["anyOf"]
