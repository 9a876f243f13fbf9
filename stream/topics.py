"""The worker's ``topics`` loop: every topic exists (with its partitions) and the producer delivers.

A broker can come back empty: tansu keeps everything in memory, and a Kafka cluster can be rebuilt or lose a topic.
Consumers and producers never create topics (:func:`stream.kafka.config.forbid_auto_create`), so nothing recreates a
topic with the broker's default partition count behind the worker's back. This loop, every
``topics.check_interval_s``:

* describes the five topics; missing ones are created with ``topics.partitions`` when ``topics.create`` is true,
  and otherwise reported (an error log) while the worker waits for them. Readiness ``topics`` is false while a topic
  is missing or the broker cannot be reached.
* reports a partition count that changed (or differs from ``topics.partitions``). The consumers follow it: the
  query loop assigns the new partitions of the query topic (readiness ``query_assigned`` is false until it reads
  every partition), and the groups rebalance within ``kafka.metadata_max_age_ms``.
* keeps readiness ``producer`` false while the sink cannot deliver (:class:`stream.ports.DeliveryStatus`: its last
  flush failed); once the topics are back it replaces the failed producer (:meth:`~stream.ports.DeliveryStatus.
  recover`), so an idle worker does not stay unready.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stream.errors import BrokerError
from stream.health import Health
from stream.ports import DeliveryStatus, MessageSink, TopicAdmin
from stream.settings import Settings

__all__ = ["TopicWatch"]

LOG = logging.getLogger(__name__)
_TICK_S = 0.2


class TopicWatch:
    """The ``topics`` loop of the worker (a :class:`stream.ports.Loop`; see the module docstring).

    Args:
        settings: all settings (``topics``).
        admin: inspects and creates topics (closed by :meth:`close`).
        sink: the worker's producer (its delivery state feeds readiness ``producer``), or None.
        health: readiness conditions ``topics`` and ``producer``, heartbeat ``topics``.
        on_changed: told of topics that came back, were created again or changed their partition count, as
            ``{name: id}`` (the topic's new id, None where the broker has no topic ids).
    """

    def __init__(self, settings: Settings, admin: TopicAdmin, sink: MessageSink | None = None, *,
                 health: Health | None = None,
                 on_changed: Callable[[dict[str, str | None]], None] | None = None) -> None:
        t = settings.topics
        self.settings = settings
        self.names = [t.video, t.queries, t.candidates, t.results, t.dead_letters]
        self.admin = admin
        self.sink = sink
        self.health = health
        self.on_changed = on_changed
        self.counts: dict[str, int] = {}  # the last partition count seen of each topic
        self.problem: str | None = "not checked yet"
        self.created: list[str] = []  # every topic this loop (re)created
        self._reported: set[tuple[str, int]] = set()
        self._last: dict[str, tuple[int, str | None] | None] = {}  # (count, id) at the last check; None: missing
        self._next_check = 0.0

    def start(self) -> None:
        """Check once now (readiness is known before the loops run)."""
        self.check()

    def close(self) -> None:
        """Release the admin client."""
        self.admin.close()
        if self.health is not None:
            self.health.forget("topics")

    def run_once(self) -> int:
        """:meth:`poll`, then a short sleep (the loop's own thread). Returns 0 (reads no record)."""
        self.poll()
        time.sleep(_TICK_S)
        return 0

    def poll(self) -> None:
        """Without waiting: the producer's state, and the topics when a check is due."""
        if self.health is not None:
            self.health.beat("topics")
        if time.monotonic() >= self._next_check:
            self.check()
        else:
            self._check_sink(recover=False)

    def check(self) -> None:
        """Describe the topics, create the missing ones (``topics.create``), report changes, check the producer."""
        self._next_check = time.monotonic() + self.settings.topics.check_interval_s
        problem = self._check_topics()
        if problem != self.problem:
            if problem is not None:
                LOG.error("not ready: %s", problem)
            elif self.problem != "not checked yet":
                LOG.warning("every topic is back: %s", self._describe())
        self.problem = problem
        if self.health is not None:
            self.health.set_condition("topics", problem is None)
        self._check_sink(recover=problem is None)

    def _describe(self) -> str:
        return ", ".join(f"{n} ({self.counts[n]} partitions)" for n in self.names if n in self.counts)

    def _check_topics(self) -> str | None:
        t = self.settings.topics
        try:
            counts = self.admin.partitions(self.names)
            missing = [n for n in self.names if n not in counts]
            if missing and t.create:
                created = self.admin.create(missing)
                if created:
                    LOG.warning("topics %s were missing (the broker lost them: restarted empty?); created them with "
                                "%d partitions", ", ".join(created), t.partitions)
                    self.created += created
                counts = self.admin.partitions(self.names)
                missing = [n for n in self.names if n not in counts]
        except BrokerError as exc:
            return f"cannot check the topics: {exc}"
        for name, n in counts.items():
            before = self.counts.get(name)
            if before is not None and before != n:
                LOG.warning("topic %s has %d partitions now (it had %d): the consumers follow", name, n, before)
            if n != t.partitions and (name, n) not in self._reported:
                self._reported.add((name, n))
                LOG.warning("topic %s has %d partitions, topics.partitions is %d (created by someone else?): every "
                            "partition is consumed", name, n, t.partitions)
        self.counts.update(counts)
        self._note_changes(counts)
        if missing:
            return (f"topics {', '.join(missing)} missing; topics.create is false: waiting for them to be created"
                    if not t.create else f"topics {', '.join(missing)} missing (creating them failed)")
        return None

    def _note_changes(self, counts: dict[str, int]) -> None:
        """Tell ``on_changed`` of the topics that came back, were created again or changed their partition count
        since the last check (the worker makes its group consumers join again: see ``KafkaSource.request_rejoin``)."""
        ids = self.admin.topic_ids()
        changed: dict[str, str | None] = {}
        for name in self.names:
            now = (counts[name], ids.get(name)) if name in counts else None
            if name in self._last and now is not None and self._last[name] != now:
                changed[name] = ids.get(name)
            self._last[name] = now
        if changed:
            LOG.warning("topics %s were created again or changed: the consumers join their groups again",
                        ", ".join(changed))
            if self.on_changed is not None:
                self.on_changed(changed)

    def _check_sink(self, *, recover: bool) -> None:
        sink = self.sink
        if not isinstance(sink, DeliveryStatus) or sink.delivery_problem() is None:
            ok = True
        else:
            ok = recover and sink.recover()
        if self.health is not None:
            self.health.set_condition("producer", ok)
