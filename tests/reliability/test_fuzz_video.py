"""Fuzzing ``stream.decode.decode_chunk``: corrupt video → ``VideoDecodeError`` or partial frames, never a crash.

Fixtures are real segments encoded with PyAV (H.264 in MPEG-TS and MP4, as a camera gateway would publish),
then truncated, bit-flipped, replaced by garbage, given the wrong container, or stripped of video. Each decode
runs under a time bound; a decoder hang would make the worker miss ``max_poll_interval_ms`` and be thrown out of
its group.
"""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.decode import DecodedChunk, decode_chunk
from stream.errors import VideoDecodeError

VIDEO = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRAMES = 30
DECODE_BOUND_S = 5.0


def encode_video(n: int = FRAMES, w: int = 160, h: int = 120, fmt: str = "mpegts", codec: str = "libx264",
                 fps: int = 10, gop: int = 10) -> bytes:
    """``n`` frames of a moving bar, encoded with PyAV."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"g": str(gop), "preset": "ultrafast", "bf": "2"}
        for i in range(n):
            img = np.full((h, w, 3), 40, np.uint8)
            img[:, (i * 5) % (w - 10):(i * 5) % (w - 10) + 10] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def encode_audio_only() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        stream = out.add_stream("mp2", rate=44_100)
        for _ in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
            frame.sample_rate = 44_100
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ts() -> bytes:
    return encode_video()


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return encode_video(fmt="mp4")


TS = encode_video()
MP4 = encode_video(fmt="mp4")


def _check(data: bytes, container: str = "mpegts", **kw: int) -> DecodedChunk | None:
    t0 = time.perf_counter()
    try:
        out = decode_chunk(data, container=container, **kw)
    except VideoDecodeError as exc:
        assert exc.reason and isinstance(exc.reason, str)
        out = None
    else:
        assert 0 < out.decoded <= kw.get("max_frames", 3_000)
        assert len(out.frames) <= out.decoded
        for f in out.frames:
            assert f.image.dtype == np.uint8 and f.image.ndim == 3 and f.image.shape[2] == 3
            assert max(f.image.shape[:2]) <= kw.get("max_side", 640)
            assert f.offset >= 0.0
    assert time.perf_counter() - t0 < DECODE_BOUND_S
    return out


def test_fixtures_decode_completely(ts: bytes, mp4: bytes) -> None:
    for data, container in ((ts, "mpegts"), (mp4, "mp4")):
        out = decode_chunk(data, container=container)
        assert out.decoded == FRAMES and len(out.frames) == FRAMES and out.error is None
        assert out.codec == "h264" and (out.width, out.height) == (160, 120)
        offsets = [f.offset for f in out.frames]
        assert offsets == sorted(offsets) and offsets[0] == 0.0


def test_selection_and_frame_cap(ts: bytes) -> None:
    out = decode_chunk(ts, select=lambda i, t: i % 3 == 0)
    assert out.decoded == FRAMES and [f.index for f in out.frames] == list(range(0, FRAMES, 3))
    out = decode_chunk(ts, max_frames=7)
    assert out.decoded == 7 and out.error and "cut" in out.error


@VIDEO
@given(which=st.sampled_from(["mpegts", "mp4"]), cut=st.floats(min_value=0.0, max_value=1.0))
def test_truncated_segments(which: str, cut: float) -> None:
    data = TS if which == "mpegts" else MP4
    out = _check(data[: int(len(data) * cut)], container=which)
    if out is not None:
        assert out.decoded <= FRAMES


@pytest.mark.slow
@VIDEO
@given(which=st.sampled_from(["mpegts", "mp4"]),
       flips=st.lists(st.tuples(st.integers(min_value=0, max_value=2**31), st.integers(1, 255)), min_size=1,
                      max_size=200))
def test_bit_flipped_segments(which: str, flips: list[tuple[int, int]]) -> None:
    data = bytearray(TS if which == "mpegts" else MP4)
    for pos, mask in flips:
        data[pos % len(data)] ^= mask
    _check(bytes(data), container=which)


@VIDEO
@given(data=st.binary(min_size=0, max_size=20_000), container=st.sampled_from(["mpegts", "mp4"]))
def test_garbage(data: bytes, container: str) -> None:
    _check(data, container=container)


@pytest.mark.slow
@VIDEO
@given(start=st.integers(min_value=0, max_value=len(TS)), length=st.integers(min_value=0, max_value=len(TS)),
       junk=st.binary(max_size=2_000))
def test_spliced_segments(start: int, length: int, junk: bytes) -> None:
    """A packet range replaced by junk (a lossy relay), or packets of the segment repeated."""
    _check(TS[:start] + junk + TS[start + length:])
    _check(TS[:start] + TS[start:start + length] * 2)


@pytest.mark.parametrize(
    ("data", "container", "reasons"),
    [
        pytest.param(b"", "mpegts", {"empty_video"}, id="empty"),
        pytest.param(b"\x00" * 100_000, "mpegts", {"corrupt_video"}, id="zero-bytes-ts"),
        pytest.param(b"\x00" * 100_000, "mp4", {"corrupt_video"}, id="zero-bytes-mp4"),
        pytest.param(b"\x47" + b"\x00" * 187, "mpegts", {"corrupt_video"}, id="one-null-ts-packet"),
        pytest.param(TS, "mp4", {"corrupt_video"}, id="ts-as-mp4"),
        pytest.param(MP4, "mpegts", {"corrupt_video"}, id="mp4-as-ts"),
        pytest.param(TS[:188], "mpegts", {"corrupt_video", "no_video_stream"}, id="ts-one-packet"),
        pytest.param(MP4[: len(MP4) // 2], "mp4", {"corrupt_video"}, id="mp4-cut-moov"),
        pytest.param(encode_audio_only(), "mpegts", {"no_video_stream"}, id="audio-only"),
        pytest.param(encode_video(codec="mpeg2video"), "mpegts", {"unsupported_codec"}, id="mpeg2-unsupported"),
        pytest.param(b"GIF89a" + b"\x00" * 1000, "mpegts", {"corrupt_video"}, id="gif"),
    ],
)
def test_bad_segments_have_reasons(data: bytes, container: str, reasons: set[str]) -> None:
    with pytest.raises(VideoDecodeError) as info:
        decode_chunk(data, container=container)
    assert info.value.reason in reasons


def test_truncated_ts_keeps_the_frames_before_the_cut(ts: bytes) -> None:
    out = decode_chunk(ts[: len(ts) // 2])
    assert 0 < out.decoded < FRAMES
    assert [f.index for f in out.frames] == list(range(out.decoded))


def test_large_declared_frame_is_cut_by_max_side() -> None:
    data = encode_video(n=3, w=1920, h=1080, gop=3)
    out = decode_chunk(data, max_side=320)
    assert out.decoded == 3 and all(f.image.shape == (180, 320, 3) for f in out.frames)


@pytest.mark.parametrize(
    ("container", "flips", "seed"),
    [
        # regression seeds: PyAV's demuxer raised IndexError when corrupt MPEG-TS announced a stream mid-segment
        ("mpegts", 20, 175), ("mpegts", 200, 38), ("mpegts", 200, 69),
        # regression seeds: a flipped codec id left the MP4 video stream without a codec context (AttributeError)
        ("mp4", 20, 3), ("mp4", 20, 19), ("mp4", 20, 102),
        *[("mpegts", 50, s) for s in range(4)], *[("mp4", 50, s) for s in range(4)],
    ],
)
def test_seeded_bit_flips(container: str, flips: int, seed: int) -> None:
    """Deterministic bit flips (``default_rng(seed)``: ``flips`` positions, each XORed with a random mask)."""
    data = bytearray(TS if container == "mpegts" else MP4)
    rng = np.random.default_rng(seed)
    for pos, mask in zip(rng.integers(0, len(data), flips), rng.integers(1, 256, flips), strict=True):
        data[pos] ^= mask
    _check(bytes(data), container=container)


def test_frames_over_the_pixel_limit_are_refused_from_the_header(ts: bytes) -> None:
    with pytest.raises(VideoDecodeError) as info:
        decode_chunk(ts, max_pixels=160 * 120 - 1)
    assert info.value.reason == "video_too_large"
    assert decode_chunk(ts, max_pixels=160 * 120).decoded == FRAMES


def test_a_small_segment_declaring_huge_frames_is_refused_quickly() -> None:
    """One 7696x4336 frame (just over 8K UHD): a few KB of H.264 that would cost ~1 GB and 0.3 s per frame."""
    data = encode_video(n=1, w=7696, h=4336, gop=1)
    assert len(data) < 900_000  # fits in one message
    t0 = time.perf_counter()
    with pytest.raises(VideoDecodeError) as info:
        decode_chunk(data)
    assert info.value.reason == "video_too_large" and time.perf_counter() - t0 < 1.0
