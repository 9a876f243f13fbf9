"""Matched frames as JPEG for the page, fetched back from Kafka (the worker keeps no pixels) by the same
:func:`stream.framefetch.fetch_frame` that ``l2g-stream show`` uses.

One consumer outside any group serves every fetch, one at a time; a frame fetched once is kept with its query
(:attr:`~stream.ui.sessions.UiQuery.frames`), so reloading the answer costs nothing. The outline of the geometric
proof is not drawn into the picture: the page lays it over the image as SVG, in the frame's pixel coordinates.
"""

from __future__ import annotations

import threading
import uuid
from typing import TYPE_CHECKING

from stream.errors import StreamError

if TYPE_CHECKING:
    from stream.ports import MessageSource
    from stream.settings import Settings
    from stream.ui.sessions import UiQuery

__all__ = ["FrameFetcher"]

JPEG_QUALITY = 88


class FrameFetcher:
    """Fetches, decodes and encodes matched frames.

    Args:
        settings: connection, storage roots, frame size.
        source: the consumer (default: a new Kafka one, made at the first fetch).
    """

    def __init__(self, settings: Settings, *, source: MessageSource | None = None) -> None:
        self.settings = settings
        self._source = source
        self._lock = threading.Lock()

    def _consumer(self) -> MessageSource:
        if self._source is None:
            from stream.kafka import KafkaSource

            cid = f"{self.settings.kafka.client_id}-ui-frames-{uuid.uuid4().hex[:6]}"
            self._source = KafkaSource(self.settings.kafka, client_id=cid, group_id=None, max_poll_records=10,
                                       fetch_max_wait_ms=50)
        return self._source

    def jpeg(self, query: UiQuery, index: int) -> bytes:
        """The JPEG of match ``index`` of ``query``'s answer.

        Raises:
            LookupError: the answer has no such match, or the match says nothing of where its frame lives.
            StreamError: the frame cannot be fetched or decoded (see :func:`stream.framefetch.fetch_frame`).
        """
        cached = query.frames.get(index)
        if cached is not None:
            return cached
        result = query.result
        ref = result.matches[index].frame_ref if result is not None and index < len(result.matches) else None
        if ref is None:
            raise LookupError(f"match {index} has no frame reference")
        import cv2

        from stream.framefetch import fetch_frame

        with self._lock:
            image = fetch_frame(self.settings, ref, source=self._consumer())
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise StreamError(f"cannot encode frame {index} as JPEG")
        query.frames[index] = bytes(buf)
        return query.frames[index]

    def close(self) -> None:
        """Release the consumer."""
        if self._source is not None:
            self._source.close()
