"""Matched frames fetched back from Kafka by their :class:`~stream.messages.FrameRef` (the worker keeps no pixels).

A frame's chunk is read at its topic, partition and offset with a consumer outside any group (its assignment is
changed: only the partitions asked for are read), its payload (inline or claim check) decoded with PyAV, and only
the frames asked for converted to RGB, at the size frames are indexed at (``ingest.frame_max_side``), which is
the pixel grid of ``Match.geometry``. Each chunk is decoded once for all the frames it holds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from stream.decode import RGBImage, decode_chunk
from stream.envelope import decode_message
from stream.errors import BrokerError, StreamError, VideoDecodeError
from stream.messages import FrameRef, VideoChunk
from stream.ports import MessageSource, Partition, Record
from stream.refs import resolve_ref
from stream.settings import Settings

__all__ = ["fetch_frame", "fetch_frames", "read_record"]


def read_record(source: MessageSource, topic: str, partition: int, offset: int, timeout_s: float) -> Record:
    """The record at ``topic``/``partition``/``offset``.

    Raises:
        BrokerError: the partition does not exist, the record is gone (past retention) or not read in time.
    """
    target = Partition(topic, partition)
    if target not in source.assign_all(topic, from_end=True):
        raise BrokerError(f"the topic {topic} has no partition {partition}")
    source.seek(target, offset)
    where = f"{topic}[{partition}]@{offset}"
    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        for rec in source.poll(min(0.5, remaining), 10):
            if rec.topic == topic and rec.partition == partition:
                if rec.offset == offset:
                    return rec
                if rec.offset > offset:
                    raise BrokerError(f"the chunk at {where} is no longer in Kafka (past the topic's retention?)")
    raise BrokerError(f"the record at {where} was not read within {timeout_s:.0f} s")


def _decode(settings: Settings, record: Record, indices: set[int]) -> dict[int, RGBImage]:
    chunk = decode_message(record.value, record.headers, VideoChunk)
    data = chunk.data if chunk.data is not None else resolve_ref(chunk.ref or "", settings.storage)
    decoded = decode_chunk(data, container=chunk.container, select=lambda index, _offset: index in indices,
                           max_side=settings.ingest.frame_max_side, max_frames=max(indices) + 1)
    return {f.index: f.image for f in decoded.frames}


def fetch_frames(settings: Settings, refs: Sequence[FrameRef], *, source: MessageSource, timeout_s: float = 10.0
                 ) -> list[RGBImage | StreamError]:
    """The ``(H, W, 3)`` uint8 RGB frames ``refs`` point at, or per frame the error that kept it.

    Args:
        settings: storage roots (claim checks) and the frame size (``ingest.frame_max_side``).
        refs: where the frames live.
        source: a consumer outside any group (its assignment is changed).
        timeout_s: how long to look for each chunk.

    Returns:
        One entry per ref, in order: the frame, or a :class:`~stream.errors.BrokerError` (chunk not found) or
        :class:`~stream.errors.BadInputError` (not a video chunk, claim check unreadable, frame not in the chunk).
    """
    by_chunk: dict[tuple[str, int, int], set[int]] = {}
    for ref in refs:
        by_chunk.setdefault((ref.topic, ref.partition, ref.offset), set()).add(ref.frame_index)
    frames: dict[tuple[str, int, int], dict[int, RGBImage] | StreamError] = {}
    for (topic, partition, offset), indices in by_chunk.items():
        try:
            frames[(topic, partition, offset)] = _decode(settings, read_record(source, topic, partition, offset,
                                                                               timeout_s), indices)
        except StreamError as exc:
            frames[(topic, partition, offset)] = exc
    out: list[RGBImage | StreamError] = []
    for ref in refs:
        got = frames[(ref.topic, ref.partition, ref.offset)]
        if isinstance(got, StreamError):
            out.append(got)
        elif ref.frame_index in got:
            out.append(got[ref.frame_index])
        else:
            out.append(VideoDecodeError(f"the chunk at {ref.topic}[{ref.partition}]@{ref.offset} has no frame "
                                        f"{ref.frame_index}", reason="frame_missing"))
    return out


def fetch_frame(settings: Settings, ref: FrameRef, *, source: MessageSource, timeout_s: float = 10.0) -> RGBImage:
    """The RGB frame ``ref`` points at (see :func:`fetch_frames`).

    Raises:
        BrokerError: the chunk is not found in time (or the partition does not exist).
        BadInputError: the record is not a video chunk, its claim check cannot be read, or it does not decode
            (a :class:`~stream.errors.VideoDecodeError` when the frame is not in it).
    """
    (got,) = fetch_frames(settings, [ref], source=source, timeout_s=timeout_s)
    if isinstance(got, StreamError):
        raise got
    return got
