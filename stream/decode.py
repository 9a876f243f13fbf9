"""Decoding: video segments (PyAV, frame-threaded) and query images (OpenCV) into RGB arrays.

Every failure is a :class:`~stream.errors.BadInputError` subclass with a ``reason``, so the worker can
dead-letter the message and go on.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import av
import cv2
import numpy as np
import numpy.typing as npt

from stream.errors import ImageDecodeError, VideoDecodeError

__all__ = [
    "SUPPORTED_CODECS",
    "DecodedChunk",
    "DecodedFrame",
    "av_error_text",
    "declared_frames",
    "decode_chunk",
    "decode_image",
    "fit_size",
    "truncation_tolerance",
]

LOG = logging.getLogger(__name__)

#: Video codecs the worker decodes; anything else is dead-lettered as ``unsupported_codec``.
SUPPORTED_CODECS = frozenset({"h264", "hevc", "mpeg4", "vp9", "av1", "libdav1d", "mjpeg"})

#: Largest video frame decoded (8K UHD). Decoding cost grows with frame size and a few hundred KB of H.264 can
#: declare 8192x8192 frames (measured: 232 KB, 10 frames, 1.1 GB RSS and 0.27 s per frame on 2 cores).
MAX_VIDEO_PIXELS = 7680 * 4320

RGBImage = npt.NDArray[np.uint8]
FrameSelector = Callable[[int, float], bool]


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled down so the longer side is at most ``max_side`` (even sizes, never upscaled)."""
    scale = min(1.0, max_side / max(width, height))
    w = max(2, round(width * scale / 2) * 2)
    h = max(2, round(height * scale / 2) * 2)
    return (w, h) if scale < 1.0 else (width, height)


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded, selected frame.

    Attributes:
        index: position in the segment's presentation order (0-based).
        offset: seconds since the segment's first frame.
        image: ``(H, W, 3)`` uint8 RGB, resized to the requested maximum side.
    """

    index: int
    offset: float
    image: RGBImage


@dataclass(frozen=True)
class DecodedChunk:
    """What decoding one segment produced.

    Attributes:
        frames: the selected frames (the others were decoded but not converted).
        decoded: frames decoded in total.
        codec: the codec found.
        width, height: coded size of the stream.
        error: set when decoding stopped early (truncated or corrupt tail), frames were corrupt, or fewer frames
            decoded than the container declares; ``frames`` hold the good frames.
        corrupt: frames the decoder flagged as corrupt (concealed errors); counted in ``decoded`` (they keep their
            frame number) but never selected.
        declared: frames the container declares (:func:`declared_frames`); 0 when it declares none (MPEG-TS).
        truncated: fewer frames decoded than ``declared``, beyond :func:`truncation_tolerance` (the data was cut
            short); ``error`` then names both counts.
    """

    frames: list[DecodedFrame] = field(default_factory=list)
    decoded: int = 0
    codec: str = ""
    width: int = 0
    height: int = 0
    error: str | None = None
    corrupt: int = 0
    declared: int = 0
    truncated: bool = False


def declared_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """Frames the container declares for ``stream``; 0 when it declares none.

    Only the MP4 family (``mov,mp4,...`` demuxer) is trusted: its sample table lists every frame stored, and the
    stream duration applies the edit list, so the smaller of the sample count and duration x frame rate is taken
    (a clip whose edit list hides 8 of its 467 samples presents 459 frames). MPEG-TS carries no count (its duration
    is estimated from the data that arrived, so it shrinks with the data), and AVI indexes also count
    dropped-frame entries that decode to nothing, so neither is checked.
    """
    if "mp4" not in (container.format.name or "").split(","):
        return 0
    counts = [stream.frames] if stream.frames > 0 else []
    rate = stream.average_rate
    if stream.duration and stream.time_base and rate:
        counts.append(round(float(stream.duration * stream.time_base * rate)))
    return max(0, min(counts)) if counts else 0


def truncation_tolerance(declared: int) -> int:
    """Frames a healthy file may decode fewer than it declares (B-frame delay, edit-list rounding): 2, or 1 %."""
    return max(2, declared // 100)


def av_error_text(exc: BaseException) -> str:
    """A PyAV/FFmpeg error in words: without the ``[Errno 541478725]`` FFmpeg code and the ``'<none>'`` file name
    of in-memory data, and with what the two usual codes mean for a caller who sent bytes that are not video."""
    if isinstance(exc, av.FFmpegError):
        text = str(exc.strerror or "").strip() or type(exc).__name__
        if isinstance(exc, av.EOFError):
            text = "no video stream found before the data ended (truncated, or not MPEG-TS/MP4 video)"
        elif isinstance(exc, av.InvalidDataError):
            text = "invalid data: not a video container FFmpeg recognises"
        return text
    return str(exc)


def decode_chunk(
    data: bytes,
    *,
    container: str = "mpegts",
    select: FrameSelector | None = None,
    max_side: int = 640,
    threads: int = 0,
    max_frames: int = 3_000,
    max_pixels: int = MAX_VIDEO_PIXELS,
) -> DecodedChunk:
    """Decode one self-contained MPEG-TS or MP4 segment.

    Every frame is decoded (inter-frame codecs need them all), but only frames for which ``select(index, offset)``
    is true are converted to RGB, which is the expensive part.

    Args:
        data: the encoded segment.
        container: ``mpegts`` or ``mp4`` (a hint; the demuxer still probes).
        select: which frames to convert (None: all).
        max_side: converted frames are resized so their longer side is at most this.
        threads: decoder threads with ``thread_type="AUTO"`` (0 = automatic).
        max_frames: stop after this many frames.
        max_pixels: a stream whose frames have more pixels is refused (``video_too_large``); a frame that grows
            past it mid-segment ends the decode there.

    Returns:
        The selected frames and decode statistics; ``error`` is set when the data ended in an error after at
        least one frame, and ``error`` and ``truncated`` when fewer frames decoded than an MP4 declares.

    Raises:
        VideoDecodeError: nothing decodable (reason ``corrupt_video``), no video stream (``no_video_stream``),
            an unsupported codec (``unsupported_codec``), or frames over ``max_pixels`` (``video_too_large``).
    """
    if not data:
        raise VideoDecodeError("empty video segment", reason="empty_video")
    try:
        source = av.open(io.BytesIO(data), mode="r", format=container)
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise VideoDecodeError(f"cannot open {container} segment ({len(data)} bytes): {av_error_text(exc)}") from exc
    with source:
        if not source.streams.video:
            raise VideoDecodeError(f"{container} segment has no video stream", reason="no_video_stream")
        stream = source.streams.video[0]
        if stream.codec_context is None:  # the demuxer found a stream but no decoder for its codec id
            raise VideoDecodeError(f"no decoder for the video stream of this {container} segment",
                                   reason="unsupported_codec")
        codec = stream.codec_context.name
        if codec not in SUPPORTED_CODECS:
            raise VideoDecodeError(f"unsupported video codec {codec!r}", reason="unsupported_codec")
        stream.thread_type = "AUTO"
        stream.thread_count = threads
        frames: list[DecodedFrame] = []
        decoded = 0
        corrupt = 0
        first: float | None = None
        error: str | None = None
        rate = float(stream.average_rate) if stream.average_rate else 0.0
        width, height = stream.codec_context.width, stream.codec_context.height
        declared = declared_frames(source, stream)
        if width * height > max_pixels:
            raise VideoDecodeError(f"{width}x{height} frames exceed {max_pixels} pixels", reason="video_too_large")
        try:
            for frame in source.decode(stream):
                if frame.width * frame.height > max_pixels:  # the size grew mid-segment (a new SPS)
                    raise VideoDecodeError(f"{frame.width}x{frame.height} frame exceeds {max_pixels} pixels",
                                           reason="video_too_large")
                t = frame.time if frame.time is not None else (decoded / rate if rate else float(decoded))
                if first is None:
                    first = t
                offset = max(0.0, t - first)
                if frame.is_corrupt:  # the decoder concealed missing or damaged data: never index it
                    corrupt += 1
                elif select is None or select(decoded, offset):
                    w, h = fit_size(frame.width, frame.height, max_side)
                    image = frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
                    frames.append(DecodedFrame(decoded, offset, np.ascontiguousarray(image, dtype=np.uint8)))
                decoded += 1
                if decoded >= max_frames:
                    error = f"segment cut at {max_frames} frames"
                    break
        except (av.FFmpegError, ValueError, OSError, MemoryError, IndexError) as exc:
            # IndexError: PyAV's demuxer (18.1) fails so when corrupt MPEG-TS announces a new stream mid-segment
            if decoded == 0:
                raise VideoDecodeError(f"cannot decode {codec} segment: {av_error_text(exc)}") from exc
            error = f"decoding stopped after {decoded} frames: {av_error_text(exc)}"
        if decoded == corrupt:
            raise VideoDecodeError(f"{codec} segment of {len(data)} bytes holds no decodable frame"
                                   + (f" ({corrupt} corrupt)" if corrupt else ""))
        truncated = decoded < min(declared, max_frames) - truncation_tolerance(declared)
        if truncated:  # the demuxer just ran out of data: keep what decoded and report the rest
            shortfall = f"decoded {decoded} of {declared} frames the {container} container declares"
            error = shortfall if error is None else f"{error} ({shortfall})"
        if corrupt and error is None:
            error = f"{corrupt} of {decoded} frames corrupt"
    return DecodedChunk(frames, decoded, codec, width, height, error, corrupt, declared, truncated)


def decode_image(data: bytes, *, max_side: int = 640, max_pixels: int = 40_000_000) -> RGBImage:
    """Decode a JPEG or PNG query image to RGB, resized so its longer side is at most ``max_side``.

    Args:
        data: the encoded image.
        max_side: resize bound (matches the scale frames are indexed at).
        max_pixels: larger images are rejected before decoding (decompression-bomb guard).

    Returns:
        ``(H, W, 3)`` uint8 RGB.

    Raises:
        ImageDecodeError: empty, not JPEG/PNG, corrupt, or too large.
    """
    if not data:
        raise ImageDecodeError("empty image", reason="empty_image")
    if not (data.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"))):
        raise ImageDecodeError("image is neither JPEG nor PNG", reason="unsupported_image")
    size = _image_size(data)
    if size is None:  # never hand OpenCV an image whose size was not checked: it would allocate up to 1 Gpixel
        raise ImageDecodeError(f"image header unreadable or truncated ({len(data)} bytes)")
    if size[0] * size[1] > max_pixels:
        raise ImageDecodeError(f"image of {size[0]}x{size[1]} pixels exceeds {max_pixels}", reason="image_too_large")
    buf = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageDecodeError(f"cannot decode image ({len(data)} bytes)")
    if bgr.shape[0] < 8 or bgr.shape[1] < 8:
        raise ImageDecodeError(f"image of {bgr.shape[1]}x{bgr.shape[0]} is too small", reason="image_too_small")
    w, h = fit_size(bgr.shape[1], bgr.shape[0], max_side)
    if (w, h) != (bgr.shape[1], bgr.shape[0]):
        bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
    rgb: RGBImage = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return rgb


_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG IHDR or JPEG SOF header without decoding; None when not found.

    The JPEG walk follows the marker syntax libjpeg accepts (fill bytes ``0xFF`` before a marker, standalone
    markers without a length), so a frame header cannot be hidden from this check and still be decoded.
    """
    if data.startswith(b"\x89PNG"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            return None
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # TEM, SOI, RSTn: no length
            continue
        if marker in (0x00, 0xD9, 0xDA) or i + 2 > n:  # stuffed byte (libjpeg skips it), EOI, or scan before SOF
            return None
        length = int.from_bytes(data[i:i + 2], "big")
        if length < 2:
            return None
        if marker in _JPEG_SOF:
            if i + 7 > n:
                return None
            return int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 3:i + 5], "big")
        i += length
    return None
