"""Encoding and segmenting video into self-contained MPEG-TS chunks."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from stream.decode import decode_chunk
from stream.errors import MessageTooLargeError, ReferenceError_, VideoDecodeError
from stream.refs import resolve_ref, write_blob
from stream.settings import StorageSettings
from stream.video import SyntheticCamera, chunk_messages, encode_segments, segment_file

pytestmark = pytest.mark.timeout(60)


def _mp4(path: Path, frames: int = 30, fps: int = 10, gop: int = 10) -> Path:
    cam = SyntheticCamera(4, 160, 96, world_frames=frames)
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 160, 96, "yuv420p"
        s.options = {"g": str(gop), "bf": "2", "preset": "ultrafast"}
        for i, img in enumerate(cam.frames(frames)):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def test_segments_are_self_contained_and_numbered() -> None:
    segs = list(encode_segments(SyntheticCamera(1, 160, 96, world_frames=25).frames(25), 10.0, segment_seconds=1.0))
    assert [(s.first_frame, s.frame_count, s.start) for s in segs] == [(0, 10, 0.0), (10, 10, 1.0), (20, 5, 2.0)]
    for s in segs:
        d = decode_chunk(s.data)
        assert d.decoded == s.frame_count and d.error is None and d.codec == "h264"
        assert d.frames[1].offset == pytest.approx(0.1, abs=1e-3)


def test_an_h264_file_is_remuxed_at_key_frames(tmp_path: Path) -> None:
    segs = list(segment_file(_mp4(tmp_path / "a.mp4"), segment_seconds=1.0))
    assert [(s.first_frame, s.frame_count) for s in segs] == [(0, 10), (10, 10), (20, 10)]
    assert [s.start for s in segs] == pytest.approx([0.0, 1.0, 2.0])
    assert all(decode_chunk(s.data).decoded == s.frame_count for s in segs)


def test_transcoding_and_errors(tmp_path: Path) -> None:
    segs = list(segment_file(_mp4(tmp_path / "b.mp4"), segment_seconds=2.0, transcode=True, max_side=80))
    assert sum(s.frame_count for s in segs) == 30
    assert decode_chunk(segs[0].data).width == 80
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(VideoDecodeError):
        list(segment_file(tmp_path / "junk.mp4"))


def test_oversized_segments_become_claim_check_references(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (96, 160, 3), dtype=np.uint8) for _ in range(10)]
    segs = list(encode_segments(frames, 10.0))
    with pytest.raises(MessageTooLargeError, match="blob_dir"):
        list(chunk_messages("c", segs, start_time=0.0, max_bytes=5_000, source="t"))
    (chunk, msg), = chunk_messages("c", segs, start_time=0.0, max_bytes=5_000, source="t", blob_dir=tmp_path)
    assert chunk.data is None and chunk.ref is not None and msg.size <= 5_000
    storage = StorageSettings(allowed_ref_roots=[tmp_path])
    assert resolve_ref(chunk.ref, storage) == segs[0].data


def test_references_are_confined_to_allowed_roots(tmp_path: Path) -> None:
    ok = write_blob(b"abc", tmp_path / "blobs")
    other = tmp_path / "other"
    other.mkdir()
    (other / "secret").write_bytes(b"x")
    (tmp_path / "blobs" / "link").symlink_to(other / "secret")
    storage = StorageSettings(allowed_ref_roots=[tmp_path / "blobs"], max_ref_bytes=10)
    assert resolve_ref(ok, storage) == b"abc"
    for ref, reason in [(str(tmp_path / "blobs" / "link"), "ref_not_allowed"), ("relative/path", "ref_not_allowed"),
                        ("http://h/x", "ref_not_allowed"), ("file://host/etc/x", "ref_not_allowed"),
                        (str(tmp_path / "blobs" / "nope"), "ref_missing")]:
        with pytest.raises(ReferenceError_) as exc:
            resolve_ref(ref, storage)
        assert exc.value.reason == reason, ref
    big = write_blob(b"y" * 11, tmp_path / "blobs")
    with pytest.raises(ReferenceError_) as exc:
        resolve_ref(big, storage)
    assert exc.value.reason == "ref_too_large"
    with pytest.raises(ReferenceError_):
        resolve_ref(ok, StorageSettings())


def test_corrupt_frames_are_counted_not_returned() -> None:
    seg = next(encode_segments(SyntheticCamera(2, 160, 96, world_frames=10).frames(10), 10.0))
    outcomes = set()
    for cut in (0.5, 0.7, 0.9):
        try:
            d = decode_chunk(seg.data[: int(len(seg.data) * cut)])
        except VideoDecodeError:
            outcomes.add("rejected")
            continue
        assert len(d.frames) + d.corrupt == d.decoded  # corrupt frames keep their number but are never returned
        assert d.decoded < 10  # (a cut at a packet boundary decodes cleanly: VideoChunk.frame_count reveals it)
        outcomes.add("partial")
    assert "partial" in outcomes
    buf = io.BytesIO(seg.data[:2000] + bytes(range(256)) * 8)
    with pytest.raises(VideoDecodeError):
        decode_chunk(buf.getvalue())


def test_malformed_references_are_reference_errors(tmp_path: Path) -> None:
    storage = StorageSettings(allowed_ref_roots=[tmp_path])
    for ref in (f"{tmp_path}/a\x00b", f"file://{tmp_path}/a%00b", "file://[::1/seg.ts"):
        with pytest.raises(ReferenceError_):
            resolve_ref(ref, storage)
