"""kafka-python's lines that read like errors but are not are demoted to DEBUG (``stream.lognoise``); others stay."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from stream import lognoise

SLOW = ("Task %r ran for %.3fs (>%.3fs threshold). It is blocking the event loop -- likely a tight sync loop "
        "inside a coroutine. Other pollers will time out.")


class _Cancelled(Exception):
    """Stands for ``kafka.errors.Cancelled`` (the rule matches the class name)."""


_Cancelled.__name__ = "Cancelled"


@pytest.fixture()
def kafka_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    lognoise.install()
    caplog.set_level(logging.INFO)
    yield caplog
    lognoise._SHUTDOWN.clear()


def test_the_filter_is_on_every_kafka_logger_by_name() -> None:
    names = lognoise.kafka_logger_names()
    assert {"kafka", "kafka.net.selector", "kafka.coordinator.consumer", "kafka.coordinator.heartbeat",
            "kafka.consumer.fetcher"} <= set(names)
    lognoise.install()
    lognoise.install()  # idempotent
    assert logging.getLogger("kafka.net.selector").filters.count(lognoise._FILTER) == 1


def test_event_loop_warnings_are_dropped_at_info(kafka_logs: pytest.LogCaptureFixture) -> None:
    logging.getLogger("kafka.net.selector").warning(SLOW, "<Task poll>", 0.31, 0.1)
    logging.getLogger("kafka.coordinator.consumer").warning(
        "Rebalance listener %s.%s for group %s took %.3fs. Sync listeners block the consumer event loop (including "
        "heartbeats) -- consider AsyncConsumerRebalanceListener or wrap blocking work in a worker thread.",
        "_Listener", "on_partitions_assigned", "g", 0.4)
    assert kafka_logs.records == []


def test_a_demoted_line_is_still_seen_at_debug(kafka_logs: pytest.LogCaptureFixture) -> None:
    kafka_logs.set_level(logging.DEBUG, logger="kafka.net.selector")
    logging.getLogger("kafka.net.selector").warning(SLOW, "<Task poll>", 0.31, 0.1)
    assert [(r.levelno, r.name) for r in kafka_logs.records] == [(logging.DEBUG, "kafka.net.selector")]


def test_cancelled_tasks_at_close_are_not_errors_but_other_task_errors_are(
        kafka_logs: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("kafka.net.selector")
    for exc in (_Cancelled("closed"), RuntimeError("a real bug")):
        try:
            raise exc
        except Exception:
            log.exception("Unhandled exception in task %s:", "<Task fetch>")
    try:
        raise RuntimeError("generator ignored GeneratorExit")
    except RuntimeError:
        log.exception("Error closing coroutine for cancelled task")
    assert [r.exc_info[1].args[0] for r in kafka_logs.records if r.exc_info and r.exc_info[1]] == ["a real bug"]


def test_other_kafka_lines_are_untouched_until_the_process_is_asked_to_stop(
        kafka_logs: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("kafka.coordinator.base")
    log.warning("Heartbeat session expired, marking coordinator %s dead", 1)
    for _ in range(2):
        try:
            raise ConnectionError("socket closed")
        except ConnectionError:
            log.exception("LeaveGroup request failed")
        lognoise.shutdown_started()
    log.error("LeaveGroup request for group %s failed with error: %s", "g", "x")  # no traceback: kept
    assert [(r.levelno, r.getMessage()) for r in kafka_logs.records] == [
        (logging.WARNING, "Heartbeat session expired, marking coordinator 1 dead"),
        (logging.ERROR, "LeaveGroup request failed"),
        (logging.ERROR, "LeaveGroup request for group g failed with error: x")]


def test_loggers_outside_kafka_are_never_filtered(kafka_logs: pytest.LogCaptureFixture) -> None:
    lognoise.shutdown_started()
    logging.getLogger("stream.worker").addFilter(lognoise._FILTER)
    try:
        try:
            raise RuntimeError("x")
        except RuntimeError:
            logging.getLogger("stream.worker").exception("blocking the event loop")
    finally:
        logging.getLogger("stream.worker").removeFilter(lognoise._FILTER)
    assert len(kafka_logs.records) == 1
