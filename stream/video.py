"""Producing video chunks: synthetic scenes, H.264 encoding and segmenting of files into MPEG-TS chunks (PyAV).

Every chunk is a self-contained MPEG-TS segment starting with a key frame, so a worker decodes it alone. A file is
re-muxed without re-encoding when its codec fits MPEG-TS (H.264, HEVC) and the first segment decodes; otherwise it
is transcoded to H.264.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

from stream.decode import av_error_text, decode_chunk, fit_size
from stream.envelope import OutboundMessage, encode_message
from stream.errors import BadInputError, MessageTooLargeError, VideoDecodeError
from stream.messages import VideoChunk
from stream.refs import write_blob

__all__ = [
    "VIDEO_SUFFIXES",
    "Segment",
    "SyntheticCamera",
    "chunk_messages",
    "encode_segments",
    "segment_file",
]

LOG = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".ts", ".webm", ".mpg", ".mpeg"})
RGB = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Segment:
    """One encoded, self-contained segment.

    Attributes:
        data: MPEG-TS bytes.
        first_frame: number of its first frame in the stream (0-based).
        frame_count: frames in the segment.
        start: seconds from the start of the stream to its first frame.
        fps: nominal frame rate.
        codec: the video codec.
    """

    data: bytes
    first_frame: int
    frame_count: int
    start: float
    fps: float
    codec: str


class SyntheticCamera:
    """A fixed camera slowly panning over a seeded, textured world (shapes, text-like strokes, noise).

    Every frame differs (the view moves ``pan_px`` pixels per frame), and a crop of a frame is found only near
    that frame, which makes a good retrieval demo without any data file.

    Args:
        seed: world and camera seed (cameras with different seeds see different worlds).
        width, height: frame size.
        pan_px: horizontal shift per frame (a multiple of 16 keeps crops aligned to the ``toy`` grid).
        world_frames: frames before the pan turns back (the world is ``width + pan_px * world_frames`` wide).
    """

    def __init__(self, seed: int, width: int = 640, height: int = 360, pan_px: int = 16,
                 world_frames: int = 400) -> None:
        self.width, self.height, self.pan_px = width, height, pan_px
        rng = np.random.default_rng(seed)
        world_w = width + pan_px * world_frames
        # smooth multi-scale background, so that no two places look alike
        world = np.zeros((height, world_w, 3), np.float32)
        for cells, amp in ((4, 60.0), (16, 35.0), (64, 20.0)):
            small = rng.uniform(-amp, amp, size=(cells + 1, cells * world_w // height + 1, 3))
            world += cv2.resize(small.astype(np.float32), (world_w, height), interpolation=cv2.INTER_CUBIC)
        world = np.clip(world + rng.uniform(60, 190, size=3), 0, 255).astype(np.uint8)
        letters = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
        for _ in range(world_w * height // 2500):
            color = tuple(int(c) for c in rng.integers(0, 256, size=3))
            x, y = int(rng.integers(0, world_w)), int(rng.integers(0, height))
            kind = rng.integers(0, 4)
            if kind == 0:
                w, h = (int(v) for v in rng.integers(8, 70, size=2))
                cv2.rectangle(world, (x, y), (x + w, y + h), color, -1)
            elif kind == 1:
                cv2.circle(world, (x, y), int(rng.integers(4, 35)), color, int(rng.choice([-1, 2, 3])))
            elif kind == 2:
                pts = rng.integers(-50, 50, size=(int(rng.integers(3, 6)), 2)) + np.array([x, y])
                cv2.polylines(world, [pts.astype(np.int32)], bool(rng.integers(0, 2)), color, int(rng.integers(1, 5)))
            else:
                text = "".join(rng.choice(list(letters), size=int(rng.integers(2, 7))))
                cv2.putText(world, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.4, 1.4)), color,
                            int(rng.integers(1, 3)), cv2.LINE_AA)
        noise = rng.normal(0, 4, size=world.shape)
        self.world = np.clip(world.astype(np.float32) + noise, 0, 255).astype(np.uint8)

    def frame(self, i: int) -> RGB:
        """Frame ``i`` (the view wraps around the world)."""
        span = self.world.shape[1] - self.width
        x = (i * self.pan_px) % (2 * span)
        x = x if x <= span else 2 * span - x  # ping-pong pan
        return np.ascontiguousarray(self.world[:, x:x + self.width])

    def frames(self, n: int, start: int = 0) -> Iterator[RGB]:
        """Frames ``start .. start + n - 1``."""
        for i in range(start, start + n):
            yield self.frame(i)


def _encode(frames: list[RGB], fps: float, crf: int, preset: str) -> bytes:
    buf = io.BytesIO()
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(buf, "w", format="mpegts") as out:
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": preset, "crf": str(crf), "bf": "0", "g": str(max(1, len(frames)))}
        stream.codec_context.thread_type = "FRAME"  # one slice per frame, like a camera
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def encode_segments(frames: Iterable[RGB], fps: float, *, segment_seconds: float = 2.0, crf: int = 23,
                    preset: str = "veryfast", max_side: int | None = None) -> Iterator[Segment]:
    """Encode RGB frames to H.264 MPEG-TS segments of ``segment_seconds`` (each starts with a key frame).

    Args:
        frames: ``(H, W, 3)`` uint8 RGB frames of one size.
        fps: frame rate.
        segment_seconds: segment duration.
        crf, preset: libx264 quality and speed.
        max_side: frames are resized so their longer side is at most this (None: as they are).
    """
    per = max(1, round(segment_seconds * fps))
    batch: list[RGB] = []
    first = 0

    def flush() -> Segment:
        return Segment(_encode(batch, fps, crf, preset), first, len(batch), first / fps, fps, "h264")

    for image in frames:
        if max_side is not None:
            w, h = fit_size(image.shape[1], image.shape[0], max_side)
            if (w, h) != (image.shape[1], image.shape[0]):
                image = np.asarray(cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA), dtype=np.uint8)
        if image.shape[0] % 2 or image.shape[1] % 2:  # yuv420p needs even sizes
            image = np.ascontiguousarray(image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2])
        batch.append(image)
        if len(batch) == per:
            yield flush()
            first += len(batch)
            batch = []
    if batch:
        yield flush()


def _remux(path: Path, segment_seconds: float) -> Iterator[Segment]:
    from av.bitstream import BitStreamFilterContext

    with av.open(str(path)) as src:
        vs = src.streams.video[0]
        codec = vs.codec_context.name
        fps = float(vs.average_rate or vs.guessed_rate or 25)
        bsf = BitStreamFilterContext("h264_mp4toannexb" if codec == "h264" else "hevc_mp4toannexb", vs)
        tb = float(vs.time_base or Fraction(1, 90_000))
        state: dict[str, object] = {}
        count = 0
        first = 0
        seg_start: float | None = None
        t0: float | None = None

        def open_segment() -> None:
            buf = io.BytesIO()
            out = av.open(buf, "w", format="mpegts")
            state.update(buf=buf, out=out, stream=out.add_stream_from_template(vs))

        def close_segment() -> bytes:
            out = state["out"]
            assert isinstance(out, av.container.OutputContainer)
            out.close()
            buf = state["buf"]
            assert isinstance(buf, io.BytesIO)
            return buf.getvalue()

        for packet in src.demux(vs):
            if packet.dts is None:
                continue
            for p in bsf.filter(packet):
                t = float(p.pts if p.pts is not None else (p.dts or 0)) * tb
                if t0 is None:
                    t0 = t
                if seg_start is None:
                    open_segment()
                    seg_start = t
                elif p.is_keyframe and t - seg_start >= segment_seconds - 1e-6:
                    yield Segment(close_segment(), first, count - first, seg_start - t0, fps, codec)
                    first = count
                    open_segment()
                    seg_start = t
                p.stream = state["stream"]  # type: ignore[assignment]
                out = state["out"]
                assert isinstance(out, av.container.OutputContainer)
                out.mux(p)
                count += 1
        if seg_start is not None and count > first:
            assert t0 is not None
            yield Segment(close_segment(), first, count - first, seg_start - t0, fps, codec)


def _decoded_frames(path: Path) -> tuple[float, Iterator[RGB]]:
    src = av.open(str(path))
    vs = src.streams.video[0]
    vs.thread_type = "AUTO"
    fps = float(vs.average_rate or vs.guessed_rate or 25)

    def gen() -> Iterator[RGB]:
        with src:
            for frame in src.decode(vs):
                yield np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)

    return fps, gen()


def segment_file(path: Path, *, segment_seconds: float = 2.0, transcode: bool | None = None,
                 max_side: int | None = None, crf: int = 23, preset: str = "veryfast") -> Iterator[Segment]:
    """Cut a video file into self-contained MPEG-TS segments.

    Args:
        path: the file.
        segment_seconds: target duration (re-muxed segments end at the first key frame after it).
        transcode: True re-encodes to H.264; False only re-muxes (fails for other codecs); None re-muxes H.264 and
            HEVC when the first segment decodes, else transcodes.
        max_side: resize bound when transcoding.
        crf, preset: libx264 settings when transcoding.

    Raises:
        VideoDecodeError: the file cannot be opened or has no video stream.
    """
    try:
        with av.open(str(path)) as probe:
            if not probe.streams.video:
                raise VideoDecodeError(f"{path} has no video stream", reason="no_video_stream")
            codec = probe.streams.video[0].codec_context.name
    except av.FFmpegError as exc:
        raise VideoDecodeError(f"cannot open {path}: {av_error_text(exc)}") from exc
    remux = transcode is False or (transcode is None and codec in ("h264", "hevc") and max_side is None)
    if remux:
        segments = _remux(path, segment_seconds)
        try:
            first = next(segments)
            decode_chunk(first.data, max_frames=first.frame_count + 1, select=lambda i, t: False)
        except StopIteration:
            return
        except (BadInputError, av.FFmpegError, ValueError) as exc:
            if transcode is False:
                raise VideoDecodeError(f"{path} cannot be re-muxed to MPEG-TS: {exc}") from exc
            LOG.info("%s: re-muxing failed (%s); transcoding to H.264", path.name, exc)
        else:
            yield first
            yield from segments
            return
    fps, frames = _decoded_frames(path)
    yield from encode_segments(frames, fps, segment_seconds=segment_seconds, crf=crf, preset=preset,
                               max_side=max_side)


def chunk_messages(camera_id: str, segments: Iterable[Segment], *, start_time: float, max_bytes: int,
                   source: str, blob_dir: Path | None = None, first_sequence: int = 0) -> Iterator[
                       tuple[VideoChunk, OutboundMessage]]:
    """Video chunk messages (keyed by camera) for ``segments`` of one camera.

    A segment whose message would exceed ``max_bytes`` is written under ``blob_dir`` and sent as a ``file://``
    reference (claim check).

    Args:
        camera_id: the camera (message key).
        segments: the camera's segments in order.
        start_time: Unix time of the stream's first frame (event time).
        max_bytes: ``kafka.max_message_bytes``.
        source: ``ce_source`` header.
        blob_dir: where oversized segments go (``storage.blob_dir``); None makes them an error.
        first_sequence: sequence number of the first chunk.

    Raises:
        MessageTooLargeError: a segment is too large and there is no ``blob_dir``.
    """
    for n, seg in enumerate(segments):
        chunk = VideoChunk(camera_id=camera_id, sequence=first_sequence + n, first_frame=seg.first_frame,
                           start_time=start_time + seg.start, fps=seg.fps, container="mpegts", codec=seg.codec,
                           frame_count=seg.frame_count, data=seg.data)
        try:
            yield chunk, encode_message(chunk, source=source, max_bytes=max_bytes)
        except MessageTooLargeError:
            if blob_dir is None:
                raise MessageTooLargeError(
                    f"segment {n} of {camera_id} is {len(seg.data)} bytes (base64 in a message: "
                    f"~{math.ceil(len(seg.data) * 4 / 3)}), over kafka.max_message_bytes={max_bytes}; set "
                    "storage.blob_dir for claim-check references or use shorter segments") from None
            ref = write_blob(seg.data, blob_dir, prefix=f"{camera_id}-{chunk.sequence}", suffix=".ts")
            chunk = chunk.model_copy(update={"data": None, "ref": ref})
            yield chunk, encode_message(chunk, source=source, max_bytes=max_bytes)
