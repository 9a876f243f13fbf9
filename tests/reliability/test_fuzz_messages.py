"""Fuzzing ``stream.messages.decode_message``: whatever arrives on a topic, only a ``BadInputError`` escapes.

A worker reads bytes written by anyone with produce rights. Whatever they are, decoding must either return a
valid message (that can be encoded again, so results and dead letters can be produced) or raise a
:class:`~stream.errors.BadInputError` with a ``reason``, which the worker dead-letters. Anything else would
crash the consume loop and, after a restart, crash it again on the same offset (a poison pill).
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream import messages
from stream.envelope import decode_message, encode_message
from stream.errors import BadInputError, SchemaError
from stream.messages import CandidatePartial, DeadLetter, Query, QueryResult, VideoChunk

# every schema the module can decode (CandidatePartial and future kinds are picked up automatically)
SCHEMAS: list[type[Any]] = sorted(set(messages.SCHEMAS.values()), key=lambda c: c.__name__)
CHEAP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _check(value: bytes | None, headers: Any, schema: type[Any]) -> None:
    """decode → either a message that encodes again, or a BadInputError with a non-empty reason."""
    try:
        msg = decode_message(value, headers, schema)
    except BadInputError as exc:
        assert isinstance(exc.reason, str) and exc.reason, exc
        assert str(exc)
        return
    assert isinstance(msg, schema)
    out = encode_message(msg, source="fuzz")  # a decoded message must be producible again
    again = decode_message(out.value, out.headers, schema)
    assert again == msg or _has_nan(msg)


def _has_nan(msg: Any) -> bool:
    text = msg.model_dump_json()
    return "NaN" in text or "Infinity" in text


def _valid(schema: type[Any]) -> dict[str, Any]:
    """A minimal valid JSON document of ``schema``."""
    payload = base64.b64encode(b"\x00\x01payload").decode()
    if schema is VideoChunk:
        return {"kind": "video_chunk", "camera_id": "cam-1", "sequence": 0, "first_frame": 0, "start_time": 1e9,
                "fps": 25.0, "data": payload}
    if schema is Query:
        return {"kind": "query", "query_id": "q1", "image": payload, "k": 5}
    if schema is QueryResult:
        return {"kind": "query_result", "query_id": "q1", "worker_id": "w", "status": "complete", "mode": "l2g",
                "matches": [{"camera_id": "c", "frame": 1, "timestamp": 1.0, "score": 0.5}]}
    if schema is DeadLetter:
        return {"kind": "dead_letter", "stage": "ingest", "reason": "x", "error_class": "E", "error_message": "m",
                "original_topic": "t", "original_partition": 0, "original_offset": 1, "original_value": payload}
    if schema is CandidatePartial:  # two candidates (2-D local, 2-D global), one carrying two descriptors
        def b64(values: list[float], dtype: str) -> str:
            return base64.b64encode(np.asarray(values, dtype=dtype).tobytes()).decode()

        section = {"partition": 0, "total": 2, "cameras": ["c", "c"], "timestamps": [1.0, 2.0], "sequences": [1, 2],
                   "scores": b64([0.9, 0.5], "<f4"), "global_descriptors": b64([1, 0, 0, 1], "<f4"),
                   "descriptor_counts": [2, 0], "descriptors": b64([1, 0, 0, 1], "<f2"),
                   "keypoints": b64([1, 2, 3, 4], "<f4"), "coverage": {"frames_searched": 2, "frames_total": 2}}
        features = {"count": 1, "descriptors": b64([1, 0], "<f4"), "keypoints": b64([5, 6], "<f4"),
                    "global_descriptor": b64([0, 1], "<f4")}
        return {"kind": "candidate_partial", "query_id": "q1", "worker_id": "w", "answer_id": "a", "mode": "l2g",
                "k": 5, "local_dim": 2, "global_dim": 2, "video_topic": "v", "partitions": [0],
                "sections": [section], "deadline": 2e9, "query_features": features}
    raise AssertionError(f"no valid example for {schema.__name__}: add one here")


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
def test_the_valid_examples_decode(schema: type[Any]) -> None:
    _check(json.dumps(_valid(schema)).encode(), None, schema)
    assert isinstance(decode_message(json.dumps(_valid(schema)).encode(), None, schema), schema)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
@CHEAP
@given(data=st.binary(max_size=512))
def test_random_bytes(schema: type[Any], data: bytes) -> None:
    _check(data, None, schema)


@pytest.mark.slow
@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
@CHEAP
@given(doc=json_values)
def test_random_json_documents(schema: type[Any], doc: Any) -> None:
    _check(json.dumps(doc).encode(), None, schema)


@pytest.mark.slow
@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
@CHEAP
@given(field=st.text(max_size=20), value=json_values, drop=st.sampled_from([None, 0, 1, 2, 3, 4]))
def test_one_field_replaced_or_removed(schema: type[Any], field: str, value: Any, drop: int | None) -> None:
    doc = _valid(schema)
    keys = sorted(doc)
    target = keys[drop % len(keys)] if drop is not None else field
    if drop is not None and drop % 2:
        doc.pop(target, None)
    else:
        doc[target] = value
    _check(json.dumps(doc).encode(), None, schema)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
@CHEAP
@given(cut=st.integers(min_value=0, max_value=10_000), flip=st.integers(min_value=0, max_value=10_000),
       byte=st.integers(min_value=0, max_value=255))
def test_truncated_and_bit_flipped_json(schema: type[Any], cut: int, flip: int, byte: int) -> None:
    raw = bytearray(json.dumps(_valid(schema)).encode())
    raw = raw[: cut % (len(raw) + 1)]
    if raw:
        raw[flip % len(raw)] = byte
    _check(bytes(raw), None, schema)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
@CHEAP
@given(headers=st.lists(st.tuples(st.sampled_from(["ce_type", "ce_id", "content-type", "x"]),
                                  st.one_of(st.none(), st.binary(max_size=40),
                                            st.sampled_from([b"l2g.query", b"l2g.video_chunk",
                                                             b"l2g.query_result", b"l2g.dead_letter"]))),
                        max_size=4))
def test_random_headers(schema: type[Any], headers: list[tuple[str, bytes | None]]) -> None:
    _check(json.dumps(_valid(schema)).encode(), headers, schema)


@CHEAP
@given(version=st.one_of(st.integers(min_value=-(2**64), max_value=2**64), st.floats(), st.text(max_size=5),
                         st.none(), st.booleans()))
def test_unknown_versions(version: Any) -> None:
    doc = {**_valid(Query), "version": version}
    _check(json.dumps(doc).encode(), None, Query)
    if isinstance(version, int) and not isinstance(version, bool) and version > messages.SCHEMA_VERSION:
        with pytest.raises(SchemaError):
            decode_message(json.dumps(doc).encode(), None, Query)


@CHEAP
@given(k=st.one_of(st.integers(), st.floats(), st.text(max_size=5)),
       t=st.one_of(st.floats(), st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"])),
       image=st.one_of(st.text(max_size=40), st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode())))
def test_query_numbers_and_base64(k: Any, t: Any, image: str) -> None:
    doc = {**_valid(Query), "k": k, "deadline": t, "time_from": t, "image": image}
    raw = json.dumps(doc)
    if isinstance(t, str):  # raw JSON tokens: NaN / Infinity / huge exponents
        raw = raw.replace(json.dumps(t), t)
    _check(raw.encode(), None, Query)


def test_nan_and_infinite_times_are_rejected() -> None:
    for token in ("NaN", "Infinity", "-Infinity", "1e999"):
        raw = json.dumps(_valid(VideoChunk)).replace('"start_time": 1000000000.0', f'"start_time": {token}')
        with pytest.raises(SchemaError) as info:
            decode_message(raw.encode(), None, VideoChunk)
        assert info.value.reason == "schema_violation"
        raw = json.dumps(_valid(Query)).replace('"k": 5', f'"k": 5, "deadline": {token}')
        with pytest.raises(SchemaError):
            decode_message(raw.encode(), None, Query)


@pytest.mark.parametrize("token", ["0", "1001", "2" * 30, "-1", "5.5", "true", '"5"'])
def test_k_out_of_range_or_wrong_type(token: str) -> None:
    raw = json.dumps(_valid(Query)).replace('"k": 5', f'"k": {token}')
    try:
        q = decode_message(raw.encode(), None, Query)
    except SchemaError as exc:
        assert exc.reason == "schema_violation"
    else:  # pydantic lax mode accepts "5" and 5.0-like values; the result must still be in range
        assert 1 <= q.k <= 1_000


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="deeply-nested-array"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="deeply-nested-object"),
        pytest.param(b'{"k":' + b"9" * 5_000 + b"}", id="integer-over-4300-digits"),
        pytest.param(b'{"k":' + b"9" * 4_000 + b"}", id="integer-under-4300-digits"),
        pytest.param(b'{"query_id":"\\ud800","camera_id":"\\udfff"}', id="lone-surrogates"),
        pytest.param(b"\xef\xbb\xbf{}", id="utf8-bom"),
        pytest.param("{\"query_id\": \"é\"}".encode("utf-16"), id="utf-16"),
        pytest.param(b"\x00" * 64, id="nul-bytes"),
        pytest.param(b"null", id="json-null"),
        pytest.param(b'"just a string"', id="json-string"),
        pytest.param(b"1e999999", id="huge-float"),
        pytest.param(b'{"kind": {"nested": "kind"}}', id="unhashable-kind"),
        pytest.param(b'{"kind": ["video_chunk"]}', id="list-kind"),
        pytest.param(b"{" + b'"a":1,' * 20_000 + b'"a":2}', id="duplicate-keys"),
    ],
)
def test_pathological_json(schema: type[Any], raw: bytes) -> None:
    _check(raw, None, schema)


@pytest.mark.slow
@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
def test_giant_fields(schema: type[Any]) -> None:
    doc = _valid(schema)
    for key in list(doc):
        if key in ("kind",):
            continue
        for giant in ("x" * 2_000_000, ["x"] * 200_000, {str(i): 1.0 for i in range(50_000)}):
            _check(json.dumps({**doc, key: giant}).encode(), None, schema)


def test_giant_payloads_decode_within_the_message_limit() -> None:
    big = base64.b64encode(b"\x00" * 3_000_000).decode()
    chunk = decode_message(json.dumps({**_valid(VideoChunk), "data": big}).encode(), None, VideoChunk)
    assert chunk.data is not None and len(chunk.data) == 3_000_000
    q = decode_message(json.dumps({**_valid(Query), "image": big}).encode(), None, Query)
    assert q.image is not None and len(q.image) == 3_000_000


@pytest.mark.parametrize("bad", ["@@@@", "AAA", "A===", "AAAA\n", " AAAA", "AA==AA==", "é"])
def test_bad_base64_is_a_schema_error(bad: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode_message(json.dumps({**_valid(Query), "image": bad}).encode(), None, Query)
    assert info.value.reason == "schema_violation"


def test_newer_version_and_wrong_kind_have_reasons() -> None:
    with pytest.raises(SchemaError, match="newer"):
        decode_message(json.dumps({**_valid(Query), "version": 2}).encode(), None, Query)
    with pytest.raises(SchemaError) as info:
        decode_message(json.dumps(_valid(Query)).encode(), None, VideoChunk)
    assert info.value.reason == "wrong_type"
    with pytest.raises(SchemaError) as info:
        decode_message(json.dumps(_valid(Query)).encode(), [("ce_type", b"l2g.video_chunk")], Query)
    assert info.value.reason == "wrong_type"
    with pytest.raises(SchemaError) as info:
        decode_message(b"", None, Query)
    assert info.value.reason == "empty_message"
    with pytest.raises(SchemaError) as info:
        decode_message(None, None, Query)
    assert info.value.reason == "empty_message"


def test_error_messages_are_bounded() -> None:
    """An attacker-sized ``kind`` or ``ce_type`` must not be echoed whole into logs and dead letters."""
    huge = "k" * 1_000_000
    for raw, headers in ((json.dumps({"kind": huge}).encode(), None),
                         (b"{}", [("ce_type", huge.encode())])):
        with pytest.raises(SchemaError) as info:
            decode_message(raw, headers, Query)
        assert len(str(info.value)) < 2_000


def test_floats_that_survive_are_finite_where_the_schema_says_so() -> None:
    q = decode_message(json.dumps({**_valid(Query), "deadline": 1.5, "sent_at": 1.0}).encode(), None, Query)
    assert q.deadline is not None and math.isfinite(q.deadline)
