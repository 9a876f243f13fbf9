"""Fetch one frame back from Kafka by its :class:`~stream.messages.FrameRef` (the UI's own copy, for now).

Written for ``l2g-stream ui`` while the shared frame-fetch helper of ``l2g-stream show`` (issue 14 item 3) was not
there yet; :mod:`stream.ui.frames` uses this module only through :func:`fetch_frame`, so switching to the shared
helper is a one-line change there, after which this module goes.

The frame's chunk is read at its topic, partition and offset (no consumer group; every other partition of the
topic stays at its end, so nothing else is fetched), its payload (inline or claim check) decoded, and only the
frame at ``frame_index`` converted to RGB.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from stream.errors import BrokerError, VideoDecodeError

if TYPE_CHECKING:
    from stream.decode import RGBImage
    from stream.messages import FrameRef
    from stream.ports import MessageSource, Record
    from stream.settings import Settings

__all__ = ["fetch_frame"]


def _chunk_record(source: MessageSource, ref: FrameRef, timeout_s: float) -> Record:
    from stream.ports import Partition

    target = Partition(ref.topic, ref.partition)
    if target not in source.assign_all(ref.topic, from_end=True):
        raise BrokerError(f"the video topic {ref.topic} has no partition {ref.partition}")
    source.seek(target, ref.offset)
    where = f"{ref.topic}[{ref.partition}]@{ref.offset}"
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        for rec in source.poll(min(0.5, remaining), 10):
            if rec.tp == target and rec.offset == ref.offset:
                return rec
            if rec.tp == target and rec.offset > ref.offset:
                raise BrokerError(f"the chunk at {where} is no longer in Kafka (past the topic's retention?)")
    raise BrokerError(f"the chunk at {where} was not read within {timeout_s:.0f} s")


def fetch_frame(settings: Settings, ref: FrameRef, *, source: MessageSource, timeout_s: float = 10.0) -> RGBImage:
    """The RGB frame ``ref`` points at, at the size frames are indexed at (``ingest.frame_max_side``).

    Args:
        settings: storage roots (claim checks), the frame size, the size limits.
        ref: where the frame lives.
        source: a consumer outside any group (its assignment is changed).
        timeout_s: how long to look for the record.

    Raises:
        BrokerError: the record is not found in time (or the partition does not exist).
        BadInputError: the record is not a video chunk, its claim check cannot be read, or it does not decode
            (a :class:`~stream.errors.VideoDecodeError` when the frame is not in it).
    """
    from stream.decode import decode_chunk
    from stream.envelope import decode_message
    from stream.messages import VideoChunk
    from stream.refs import resolve_ref

    record = _chunk_record(source, ref, timeout_s)
    chunk = decode_message(record.value, record.headers, VideoChunk)
    data = chunk.data if chunk.data is not None else resolve_ref(chunk.ref or "", settings.storage)
    decoded = decode_chunk(data, container=chunk.container, select=lambda index, _offset: index == ref.frame_index,
                           max_side=settings.ingest.frame_max_side, max_frames=ref.frame_index + 1)
    for frame in decoded.frames:
        if frame.index == ref.frame_index:
            return frame.image
    raise VideoDecodeError(f"the chunk at {ref.topic}[{ref.partition}]@{ref.offset} decodes to {decoded.decoded} "
                           f"frames; frame {ref.frame_index} is not among them", reason="frame_missing")
