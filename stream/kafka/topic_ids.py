"""Which log of a topic a consumer's positions refer to, told apart by topic id (KIP-516).

A broker restarted empty (tansu keeps topics in memory) creates the topics again with new ids; positions and
offsets kept from the old log must not be applied to the new one. The consumer learns ids from two sources that
disagree for a while: its own cluster metadata (refreshed every ``kafka.metadata_max_age_ms``, so it may still
show the old id after the group has assigned the new log) and the worker's admin client, which created the topics
and announces their new ids (:meth:`TopicIds.announce`). Without the announcement, an assignment made while the
metadata was stale records the old id, and the refresh that shows the new one looks like a second recreation: the
member leaves and joins again, and the worker answers partially for a few seconds after it reported ready.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping


class TopicIds:
    """Topic ids per topic: recorded (the log the positions refer to), announced, and retired.

    ``meta`` arguments are the id in the consumer's cluster metadata (None when unknown, missing, or the broker has
    no topic ids). :meth:`announce` may be called from any thread; the rest from the polling thread.
    """

    def __init__(self) -> None:
        self._recorded: dict[str, str] = {}
        self._retired: set[str] = set()  # replaced by a newer id: stale metadata that still shows one means nothing
        self._announced: dict[str, str] = {}  # told by the admin client, until the metadata shows them too
        self._lock = threading.Lock()

    def announce(self, ids: Mapping[str, str]) -> None:
        """The topics' current ids as the admin client saw them (``{name: id}``)."""
        with self._lock:
            self._announced.update(ids)

    def newest(self, topic: str, meta: str | None) -> str | None:
        """The newest known id: an announced one (until ``meta`` shows it), else ``meta`` unless it is retired."""
        with self._lock:
            announced = self._announced.get(topic)
            if announced is not None and announced == meta:
                del self._announced[topic]
        if announced is not None:
            return announced
        return None if meta in self._retired else meta

    def recorded(self, topic: str) -> str | None:
        """The id of the log the positions in ``topic`` refer to (None before the first :meth:`record`)."""
        return self._recorded.get(topic)

    def record(self, topic: str, meta: str | None) -> bool:
        """The positions in ``topic`` refer to its newest log now; whether that is another log than recorded before
        (the topic was deleted and created again). The id it replaces is retired."""
        tid = self.newest(topic, meta)
        if tid is None:
            return False
        before = self._recorded.get(topic)
        self._recorded[topic] = tid
        if before is not None and before != tid:
            self._retired.add(before)
            return True
        return False

    def changed(self, topic: str, meta: str | None) -> bool:
        """Whether ``topic`` has a newer log than the recorded one (never before a record, nor without ids)."""
        before = self._recorded.get(topic)
        now = self.newest(topic, meta)
        return before is not None and now is not None and now != before

    def gone(self, topic: str, meta: str | None) -> bool:
        """Whether the recorded log of ``topic`` is missing from the metadata or replaced by a newer one: offsets
        read from it must not be committed (they would make the new log skip its first records)."""
        return self._recorded.get(topic) is not None and (meta is None or self.changed(topic, meta))
