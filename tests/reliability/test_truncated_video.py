"""A truncated MP4 is reported: the frames that decode are kept, and the shortfall against the frame count its
container declares is an error (``DecodedChunk.truncated``; the ingest loop dead-letters it as ``truncated_video``).

Before: an MP4 with its index at the front (``movflags=faststart``) cut at 40 % of its bytes decoded 96-99 of its 250
frames without any error, because the demuxer simply ran out of data. MPEG-TS declares no frame count, so only the
MP4 family is checked, with a small tolerance so healthy files (edit lists, B-frame delay) are never flagged; the
real clips of ``../shared/data/video`` check that.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from stream.decode import decode_chunk
from stream.errors import VideoDecodeError
from tests.conftest import SHARED_DATA

FRAMES = 250
FPS = 25


def encode(n: int = FRAMES, *, fmt: str = "mp4", w: int = 160, h: int = 120, bframes: int = 2,
           workdir: Path | None = None) -> bytes:
    """``n`` frames of a moving bar, H.264; MP4 is written with ``movflags=faststart`` (its index before the data).

    FFmpeg moves the index by re-reading the file it wrote, so MP4 goes through a file in ``workdir``.
    """
    target: Path | io.BytesIO
    if fmt == "mp4":
        assert workdir is not None
        target = workdir / "faststart.mp4"
        options = {"movflags": "faststart"}
    else:
        target, options = io.BytesIO(), {}
    with av.open(target, "w", format=fmt, options=options) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"g": "25", "preset": "ultrafast", "bf": str(bframes)}
        for i in range(n):
            img = np.full((h, w, 3), 40, np.uint8)
            x = (i * 3) % (w - 12)
            img[:, x:x + 12] = (255, 200 - (i % 100), 60)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return target.read_bytes() if isinstance(target, Path) else target.getvalue()


@pytest.fixture(scope="module")
def faststart(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    data = encode(workdir=tmp_path_factory.mktemp("mp4"))
    assert data[4:8] == b"ftyp" and data.index(b"moov") < data.index(b"mdat"), "the index must come first"
    return data


def test_a_complete_faststart_mp4_is_not_flagged(faststart: bytes) -> None:
    out = decode_chunk(faststart, container="mp4")
    assert (out.declared, out.decoded, len(out.frames)) == (FRAMES, FRAMES, FRAMES)
    assert out.error is None and not out.truncated


def test_a_faststart_mp4_cut_at_40_percent_keeps_its_frames_and_reports_the_shortfall(faststart: bytes) -> None:
    out = decode_chunk(faststart[: int(len(faststart) * 0.4)], container="mp4")
    assert 0 < out.decoded < FRAMES and len(out.frames) == out.decoded  # what decoded is kept
    assert [f.index for f in out.frames] == list(range(out.decoded))
    assert out.declared == FRAMES and out.truncated
    assert out.error is not None and f"{out.decoded} of {FRAMES}" in out.error


@pytest.mark.parametrize("cut", [0.1, 0.25, 0.5, 0.75, 0.9, 0.98])
def test_every_cut_is_either_refused_or_reported(faststart: bytes, cut: float) -> None:
    try:
        out = decode_chunk(faststart[: int(len(faststart) * cut)], container="mp4")
    except VideoDecodeError as exc:  # nothing decodable left
        assert exc.reason == "corrupt_video"
        return
    assert out.decoded < FRAMES and out.truncated and out.error


def test_the_frame_cap_is_not_reported_as_truncation(faststart: bytes) -> None:
    out = decode_chunk(faststart, container="mp4", max_frames=100)
    assert out.decoded == 100 and not out.truncated and out.error is not None and "cut at 100" in out.error


def test_mpegts_declares_no_count_and_is_never_flagged_by_it() -> None:
    data = encode(60, fmt="mpegts")
    whole = decode_chunk(data)
    assert whole.declared == 0 and whole.decoded == 60 and whole.error is None and not whole.truncated
    cut = decode_chunk(data[: len(data) // 2])
    assert cut.declared == 0 and not cut.truncated and 0 < cut.decoded < 60


@pytest.mark.parametrize("bframes", [0, 3])
def test_healthy_mp4_with_or_without_b_frames_is_not_flagged(tmp_path: Path, bframes: int) -> None:
    for n in (1, 2, 7, 61):
        out = decode_chunk(encode(n, bframes=bframes, workdir=tmp_path), container="mp4")
        assert (out.declared, out.decoded, out.error, out.truncated) == (n, n, None, False)


def _clips() -> list[Path]:
    folder = SHARED_DATA / "video"
    return sorted(p for p in folder.glob("*.mp4")) if folder.is_dir() else []


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("clip", _clips() or [None], ids=lambda p: p.name if p else "no-clips")
def test_real_mp4_clips_are_not_flagged(shared_data: Path, clip: Path | None) -> None:
    """Healthy files, some with edit lists (one declares 467 samples and presents 459 frames): never truncated."""
    if clip is None:
        pytest.skip(f"no .mp4 clips in {shared_data / 'video'}")
    out = decode_chunk(clip.read_bytes(), container="mp4", select=lambda i, t: False, max_frames=100_000)
    assert out.declared > 0 and out.error is None and not out.truncated, (out.declared, out.decoded, out.error)
