"""The worker's ``topics`` loop (stream.topics.TopicWatch) without a broker: missing topics are created or awaited,
changes are reported, readiness follows the topics and the producer."""

from __future__ import annotations

import zlib
from collections.abc import Collection
from pathlib import Path

import numpy as np

from stream.errors import BrokerError
from stream.health import Health
from stream.testing import MemoryBroker, MemoryConnector
from stream.topics import TopicWatch
from stream.worker import Worker

from .conftest import make_settings
from .helpers import answered, png, run_until, send_query


class FakeAdmin:
    """Topics as a dict of partition counts (and ids); ``down`` makes every call fail like an absent broker."""

    def __init__(self, counts: dict[str, int] | None = None, partitions: int = 3) -> None:
        self.counts = dict(counts or {})
        self.ids: dict[str, str] = {n: f"{n}-1" for n in self.counts}
        self.default = partitions
        self.down = False
        self.created: list[str] = []

    def partitions(self, topics: Collection[str]) -> dict[str, int]:
        if self.down:
            raise BrokerError("broker unreachable")
        return {t: self.counts[t] for t in topics if t in self.counts}

    def topic_ids(self) -> dict[str, str]:
        return dict(self.ids)

    def create(self, topics: Collection[str]) -> list[str]:
        new = [t for t in topics if t not in self.counts]
        for t in new:
            self.counts[t] = self.default
            self.ids[t] = f"{t}-{len(self.created) + 2}"
        self.created += new
        return new

    def close(self) -> None:
        pass


class FakeSink:
    """A sink with a delivery state (stream.ports.DeliveryStatus)."""

    def __init__(self) -> None:
        self.problem: str | None = None
        self.recoveries = 0

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        pass

    def flush(self, timeout_s: float = 30.0) -> None:
        pass

    def close(self) -> None:
        pass

    def delivery_problem(self) -> str | None:
        return self.problem

    def recover(self) -> bool:
        self.recoveries += 1
        self.problem = None
        return True


def _names(tmp_path: Path) -> list[str]:
    t = make_settings(tmp_path).topics
    return [t.video, t.queries, t.candidates, t.results, t.dead_letters]


def test_missing_topics_are_created_with_the_configured_partitions(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    admin, health = FakeAdmin(), Health()
    watch = TopicWatch(settings, admin, health=health)
    watch.start()
    assert admin.created == _names(tmp_path)
    assert set(admin.counts.values()) == {settings.topics.partitions}
    assert health.ready() == (True, {"topics": True, "producer": True})


def test_without_create_missing_topics_keep_the_worker_unready_until_they_exist(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, topics={"create": False})
    admin, health = FakeAdmin(), Health()
    watch = TopicWatch(settings, admin, health=health)
    watch.start()
    assert admin.created == [] and not health.ready()[0]
    assert watch.problem is not None and "topics.create is false" in watch.problem
    admin.counts = dict.fromkeys(_names(tmp_path), 3)
    watch.check()
    assert health.ready()[0]


def test_an_unreachable_broker_makes_the_worker_unready(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    admin, health = FakeAdmin(dict.fromkeys(_names(tmp_path), 3)), Health()
    watch = TopicWatch(settings, admin, health=health)
    watch.start()
    assert health.ready()[0]
    admin.down = True
    watch.check()
    assert health.ready()[1]["topics"] is False
    admin.down = False
    watch.check()
    assert health.ready()[0]


def test_topics_recreated_or_resized_are_reported_to_the_worker(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    names = _names(tmp_path)
    admin, told = FakeAdmin(dict.fromkeys(names, 3)), []
    watch = TopicWatch(settings, admin, on_changed=told.append)
    watch.start()
    watch.check()
    assert told == []  # nothing changed
    admin.counts = {}  # the broker restarted empty: the watch recreates them (new ids)
    watch.check()
    assert told == [{n: f"{n}-2" for n in names}]  # with the ids the watch created them with
    admin.counts[names[1]] = 4  # the query topic comes back with 4 partitions (same id)
    watch.check()
    assert told[-1] == {names[1]: f"{names[1]}-2"} and watch.counts[names[1]] == 4


def test_readiness_follows_the_producer_and_a_failed_producer_is_recovered_once_topics_are_fine(
        tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    admin, health, sink = FakeAdmin(dict.fromkeys(_names(tmp_path), 3)), Health(), FakeSink()
    watch = TopicWatch(settings, admin, sink, health=health)
    watch.start()
    assert health.ready()[0]
    sink.problem = "3 message(s) not delivered"
    watch.poll()  # between checks: the state only
    assert health.ready()[1]["producer"] is False and sink.recoveries == 0
    watch.check()  # a check with every topic there replaces the failed producer
    assert sink.recoveries == 1 and health.ready()[0]


def test_the_query_loop_reads_partitions_added_to_the_query_topic(tmp_path: Path) -> None:
    """A query topic that comes back with a fourth partition: the query loop assigns it (from its start) and is not
    ready until it does; a query keyed there is answered (before: the loop assigned once and never read it)."""
    broker = MemoryBroker(3)
    worker = Worker(make_settings(tmp_path), connector=MemoryConnector(broker)).open()
    try:
        run_until([worker], lambda: worker.ready)
        with broker._lock:  # the topic gets a fourth partition (MemoryBroker has no API for it)
            broker._topics["l2g.queries"].append([])
        qid = next(q for q in (f"q{i}" for i in range(1000)) if zlib.crc32(q.encode()) % 4 == 3)
        send_query(broker, png(np.full((96, 96, 3), 128, np.uint8)), query_id=qid, k=2)
        assert worker.query is not None
        worker.query._next_assign = 0.0  # (it checks the topic every second)
        worker.step()
        assert len(worker.query.assigned) == 4 and worker.ready
        run_until([worker], answered(broker, qid))
    finally:
        worker.stop()
