"""Fuzzing ``stream.decode.decode_image``: any bytes → an RGB image or ``ImageDecodeError``, in bounded time and memory.

Query images come from anyone allowed to produce to the query topic. Besides corrupt data, the dangerous inputs
are decompression bombs: a few hundred bytes declaring a huge image, which OpenCV would happily allocate (up to
its own 1-Gpixel cap, i.e. 3 GB of BGR). ``decode_image`` must reject them from the header alone.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.decode import decode_image
from stream.errors import ImageDecodeError

CHEAP = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int, idat: bytes = b"") -> bytes:
    """A structurally valid PNG whose IHDR declares ``width`` x ``height`` (8-bit RGB)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_MAGIC + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(idat)) + _chunk(b"IEND", b"")


def _encode(ext: str, h: int = 96, w: int = 128, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


JPEG = _encode(".jpg")
PNG = _encode(".png")


def jpeg_with_size(width: int, height: int, prefix: bytes = b"") -> bytes:
    """``JPEG`` with its SOF0 dimensions patched, and ``prefix`` inserted right after SOI."""
    data = bytearray(JPEG)
    i = data.find(b"\xff\xc0")
    data[i + 5:i + 7] = height.to_bytes(2, "big")
    data[i + 7:i + 9] = width.to_bytes(2, "big")
    return bytes(data[:2]) + prefix + bytes(data[2:])


def _check(data: bytes, **kw: int) -> np.ndarray | None:
    try:
        img = decode_image(data, **kw)
    except ImageDecodeError as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return None
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.flags["C_CONTIGUOUS"]
    assert max(img.shape[:2]) <= kw.get("max_side", 640)
    return img


def test_valid_images_decode_and_are_resized() -> None:
    for data in (JPEG, PNG):
        img = decode_image(data)
        assert img.shape == (96, 128, 3)
    big = _encode(".jpg", 1000, 2000)
    assert decode_image(big, max_side=500).shape == (250, 500, 3)


@CHEAP
@given(data=st.binary(max_size=2_048))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@CHEAP
@given(magic=st.sampled_from([JPEG_MAGIC, PNG_MAGIC]), tail=st.binary(max_size=2_048))
def test_random_bytes_behind_a_valid_signature(magic: bytes, tail: bytes) -> None:
    _check(magic + tail)


@CHEAP
@given(which=st.sampled_from(["jpeg", "png"]), cut=st.integers(min_value=0, max_value=100_000),
       flips=st.lists(st.tuples(st.integers(min_value=0, max_value=100_000), st.integers(0, 255)), max_size=8))
def test_truncated_and_bit_flipped_images(which: str, cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(JPEG if which == "jpeg" else PNG)
    data = data[: cut % (len(data) + 1)]
    for pos, byte in flips:
        if data:
            data[pos % len(data)] = byte
    _check(bytes(data))


@CHEAP
@given(width=st.integers(min_value=0, max_value=2**32 - 1), height=st.integers(min_value=0, max_value=2**32 - 1))
def test_png_declared_sizes(width: int, height: int) -> None:
    data = png_declaring(width, height)
    if width * height > 40_000_000:
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data)
        assert info.value.reason == "image_too_large"
    else:
        _check(data)


@CHEAP
@given(width=st.integers(min_value=0, max_value=65_535), height=st.integers(min_value=0, max_value=65_535),
       prefix=st.sampled_from([b"", b"\xff", b"\xff\xff\xff", b"\xff\x00", b"\xff\xd0", b"\x00",
                               b"\xff\xfe\x00\x04ab", b"\xff\xe1\x00\x02"]))
def test_jpeg_declared_sizes_cannot_be_hidden(width: int, height: int, prefix: bytes) -> None:
    """Fill bytes, stuffed bytes, standalone and empty segments in front of SOF: a big frame is never decoded."""
    data = jpeg_with_size(width, height, prefix)
    img = _check(data, max_pixels=1_000_000)
    if width * height > 1_000_000:
        assert img is None


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(png_declaring(100_000, 100_000), id="png-100000x100000"),
        pytest.param(png_declaring(2**31 - 1, 2**31 - 1), id="png-2^31"),
        pytest.param(png_declaring(1, 100_000_000), id="png-1x1e8"),
        pytest.param(jpeg_with_size(65_535, 65_535), id="jpeg-65535^2"),
        pytest.param(jpeg_with_size(30_000, 30_000, b"\xff"), id="jpeg-30000^2-behind-fill-byte"),
        pytest.param(jpeg_with_size(30_000, 30_000, b"\xff\x00"), id="jpeg-30000^2-behind-stuffed-byte"),
        pytest.param(jpeg_with_size(30_000, 30_000, b"junk"), id="jpeg-30000^2-behind-garbage"),
        pytest.param(PNG_MAGIC + _chunk(b"tEXt", b"a\x00b") + png_declaring(30_000, 30_000)[8:],
                     id="png-30000^2-ihdr-not-first"),
    ],
)
def test_decompression_bombs_are_rejected_from_the_header(data: bytes) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.reason in ("image_too_large", "undecodable_image", "unsupported_image")


def test_a_real_bomb_in_a_child_process_stays_within_bounded_time_and_memory(tmp_path) -> None:
    """A PNG of 30000x30000 zero pixels (900 Mpixel, ~1 MB compressed) and the hidden-SOF JPEG.

    Run in a child so its peak RSS is measurable: it must stay far below the ~2.7 GB a decode would allocate.
    """
    bomb = png_declaring(30_000, 30_000, b"\x00" * (30_000 * 3 + 1) * 64)  # only 64 rows present: cheap to build
    hidden = jpeg_with_size(30_000, 30_000, b"\xff")
    (tmp_path / "bomb.png").write_bytes(bomb)
    (tmp_path / "hidden.jpg").write_bytes(hidden)
    script = textwrap.dedent(f"""
        import json, resource, time
        from pathlib import Path
        from stream.decode import decode_image
        from stream.errors import ImageDecodeError
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = {{}}
        for name in ("bomb.png", "hidden.jpg"):
            t = time.perf_counter()
            try:
                decode_image(Path({str(tmp_path)!r}, name).read_bytes())
                out[name] = "decoded"
            except ImageDecodeError as exc:
                out[name] = exc.reason
            out[name + "_s"] = time.perf_counter() - t
        out["rss_growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["bomb.png"] == "image_too_large" and out["hidden.jpg"] == "image_too_large"
    assert out["bomb.png_s"] < 1.0 and out["hidden.jpg_s"] < 1.0
    assert out["rss_growth_mb"] < 100


@pytest.mark.parametrize("data", [b"", b"\xff\xd8", JPEG_MAGIC, PNG_MAGIC, b"GIF89a" + b"\x00" * 100,
                                  b"BM" + b"\x00" * 100, b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"<svg/>"],
                         ids=["empty", "soi-only", "jpeg-magic", "png-magic", "gif", "bmp", "webp", "svg"])
def test_empty_and_other_formats(data: bytes) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data)
    assert info.value.reason in ("empty_image", "unsupported_image", "undecodable_image")


def test_tiny_images_are_rejected() -> None:
    tiny = _encode(".png", 4, 4)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(tiny)
    assert info.value.reason == "image_too_small"
