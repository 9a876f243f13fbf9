"""Claim-check references: a message may make a worker read only regular files under an allowed root.

The ingest path is ``decode_message(value) → resolve_ref(chunk.ref, settings.storage)``; whatever the reference
string, that path must return the file's bytes or raise a ``BadInputError`` (dead letter), never read outside
the roots, never read more than ``max_ref_bytes``, and never raise anything else (a poison pill that would crash
the ingest loop at the same offset after every restart).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.envelope import decode_message
from stream.errors import BadInputError, ReferenceError_
from stream.messages import Query, VideoChunk
from stream.refs import resolve_ref
from stream.settings import StorageSettings

CHEAP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path, StorageSettings]:
    allowed = tmp_path / "blobs"
    outside = tmp_path / "secret"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "seg.ts").write_bytes(b"x" * 100)
    (allowed / "big.ts").write_bytes(b"x" * 5_000)
    (outside / "key.pem").write_bytes(b"PRIVATE")
    (allowed / "link-out").symlink_to(outside / "key.pem")
    (allowed / "dir-link").symlink_to(outside)
    (allowed / "sub").mkdir()
    os.mkfifo(allowed / "fifo")
    return allowed, outside, StorageSettings(allowed_ref_roots=[allowed], max_ref_bytes=1_000)


def _chunk_with_ref(ref: str) -> bytes:
    return json.dumps({"kind": "video_chunk", "camera_id": "c", "sequence": 0, "first_frame": 0,
                       "start_time": 0.0, "fps": 10.0, "ref": ref}).encode()


def _ingest_path(ref: str, storage: StorageSettings) -> bytes | None:
    """What the ingest loop does with a chunk carrying ``ref``: bytes, or None when dead-lettered."""
    try:
        chunk = decode_message(_chunk_with_ref(ref), None, VideoChunk)
        assert chunk.ref is not None
        return resolve_ref(chunk.ref, storage)
    except BadInputError as exc:
        assert exc.reason
        return None


def test_allowed_reference_reads_the_file(roots: tuple[Path, Path, StorageSettings]) -> None:
    allowed, _, storage = roots
    assert _ingest_path(str(allowed / "seg.ts"), storage) == b"x" * 100
    assert _ingest_path((allowed / "seg.ts").as_uri(), storage) == b"x" * 100
    assert _ingest_path(f"file://localhost{allowed / 'seg.ts'}", storage) == b"x" * 100


@pytest.mark.parametrize(
    ("make_ref", "reason"),
    [
        (lambda a, o: str(o / "key.pem"), "ref_not_allowed"),
        (lambda a, o: f"{a}/../secret/key.pem", "ref_not_allowed"),
        (lambda a, o: f"file://{a}/%2e%2e/secret/key.pem", "ref_not_allowed"),
        (lambda a, o: str(a / "link-out"), "ref_not_allowed"),
        (lambda a, o: str(a / "dir-link" / "key.pem"), "ref_not_allowed"),
        (lambda a, o: "relative/seg.ts", "ref_not_allowed"),
        (lambda a, o: f"file://evil.example{a}/seg.ts", "ref_not_allowed"),
        (lambda a, o: f"http://example.com{a}/seg.ts", "ref_not_allowed"),
        (lambda a, o: f"s3://bucket{a}/seg.ts", "ref_not_allowed"),
        (lambda a, o: "/etc/passwd", "ref_not_allowed"),
        (lambda a, o: "/proc/self/environ", "ref_not_allowed"),
        (lambda a, o: str(a / "missing.ts"), "ref_missing"),
        (lambda a, o: str(a / "sub"), "ref_missing"),
        (lambda a, o: str(a / "fifo"), "ref_missing"),
        (lambda a, o: str(a / "big.ts"), "ref_too_large"),
    ],
)
def test_references_outside_roots_or_too_large_are_refused(roots: tuple[Path, Path, StorageSettings],
                                                            make_ref, reason: str) -> None:
    allowed, outside, storage = roots
    with pytest.raises(ReferenceError_) as info:
        resolve_ref(make_ref(allowed, outside), storage)
    assert info.value.reason == reason


def test_no_roots_means_no_references(roots: tuple[Path, Path, StorageSettings]) -> None:
    allowed, _, _ = roots
    with pytest.raises(ReferenceError_) as info:
        resolve_ref(str(allowed / "seg.ts"), StorageSettings())
    assert info.value.reason == "ref_not_allowed"


@pytest.mark.parametrize("ref", ["file:///blobs/a%00b", "/blobs/a\x00b", "file://[::1/seg.ts", "file://[zz]/x",
                                 "file://:99999999/x"],
                         ids=["percent-nul", "raw-nul", "bad-ipv6", "bad-ipv6-literal", "bad-port"])
def test_malformed_references_are_dead_lettered(roots: tuple[Path, Path, StorageSettings], ref: str) -> None:
    """Through the ingest path (schema, then resolve), a malformed reference is a BadInputError."""
    _, _, storage = roots
    assert _ingest_path(ref, storage) is None


def test_resolve_ref_itself_rejects_malformed_references(roots: tuple[Path, Path, StorageSettings]) -> None:
    """For direct callers too (the CLI, tools), not only behind the message schema (fixed in 09d44de)."""
    allowed, _, storage = roots
    for ref in (f"{allowed}/a\x00b", f"file://{allowed}/a%00b", "file://[::1/seg.ts"):
        with pytest.raises(ReferenceError_):
            resolve_ref(ref, storage)


@CHEAP
@given(ref=st.text(min_size=1, max_size=300))
def test_random_reference_strings(roots: tuple[Path, Path, StorageSettings], ref: str) -> None:
    _, _, storage = roots
    data = _ingest_path(ref, storage)
    assert data is None or data == b"x" * 100


@CHEAP
@given(suffix=st.text(alphabet=st.sampled_from(list("./%0123456789abcdefABCDEF-_~:@[]?#\x00 ")), max_size=40),
       scheme=st.sampled_from(["", "file://", "file:", "file://localhost", "FILE://", "file:////"]))
def test_references_built_from_an_allowed_prefix(roots: tuple[Path, Path, StorageSettings], suffix: str,
                                                 scheme: str) -> None:
    """Path-traversal shapes around the allowed root: only the one allowed small file can ever be read."""
    allowed, _, storage = roots
    data = _ingest_path(f"{scheme}{allowed}/{suffix}", storage)
    assert data is None or data == b"x" * 100


@CHEAP
@given(ref=st.text(min_size=1, max_size=200))
def test_query_image_references(roots: tuple[Path, Path, StorageSettings], ref: str) -> None:
    _, _, storage = roots
    value = json.dumps({"kind": "query", "query_id": "q", "image_ref": ref}).encode()
    try:
        query = decode_message(value, None, Query)
        assert query.image_ref is not None
        resolve_ref(query.image_ref, storage)
    except BadInputError as exc:
        assert exc.reason
