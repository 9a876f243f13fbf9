"""Log lines of kafka-python 3.x that read like errors but are not, demoted to DEBUG; every other line is untouched.

The lines, by logger (kafka-python 3.0.x):

``kafka.net.selector`` WARNING ``Task ... ran for 0.3s (>0.100s threshold). It is blocking the event loop ...``
    the client's I/O loop times each step of its coroutines against ``slow_task_threshold_secs`` (0.1 s). The
    worker's rebalance listeners load and write index snapshots inside such a step on purpose (the consumer thread
    is theirs: nothing else waits on that loop), and the worker logs the assignment itself.
``kafka.coordinator.consumer`` WARNING ``Rebalance listener ... took 0.4s. Sync listeners block the consumer event
    loop ...``: the same, reported by the coordinator.
``kafka.net.selector`` ERROR ``Error closing coroutine for cancelled task`` (with a traceback): a task cancelled while
    the client closes.
``kafka.net.selector`` ERROR ``Unhandled exception in task`` whose exception is ``kafka.errors.Cancelled``: a task
    cancelled by ``close()``.
any ``kafka.*`` ERROR with a traceback after the process was asked to stop (:func:`shutdown_started`, called by the
    worker's SIGTERM/SIGINT handler): requests in flight fail while the clients close; the shutdown itself is
    reported by the worker (snapshots, commits, ``revoked``).

A demoted line still appears with ``--log-level DEBUG``. :func:`install` is called by
:func:`stream.runtime.configure_process`, before kafka is imported (the filters go on the loggers by name).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["RULES", "KafkaNoiseFilter", "Rule", "install", "kafka_logger_names", "shutdown_started"]

_SHUTDOWN = threading.Event()


@dataclass(frozen=True)
class Rule:
    """One kind of line demoted to DEBUG.

    Attributes:
        logger: the exact logger name.
        level: the level the line is logged at.
        text: a substring of its format string (``record.msg``).
        exception: when set, only lines whose exception's class has this name.
    """

    logger: str
    level: int
    text: str
    exception: str | None = None

    def matches(self, record: logging.LogRecord) -> bool:
        """Whether ``record`` is this line."""
        if record.name != self.logger or record.levelno != self.level or self.text not in str(record.msg):
            return False
        if self.exception is None:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return exc is not None and type(exc).__name__ == self.exception


RULES = (
    Rule("kafka.net.selector", logging.WARNING, "blocking the event loop"),
    Rule("kafka.coordinator.consumer", logging.WARNING, "Sync listeners block the consumer event loop"),
    Rule("kafka.net.selector", logging.ERROR, "Error closing coroutine for cancelled task"),
    Rule("kafka.net.selector", logging.ERROR, "Unhandled exception in task", exception="Cancelled"),
)
"""The lines demoted at any time (see the module docstring)."""


def shutdown_started() -> None:
    """Record that the process was asked to stop: from now on a kafka ERROR with a traceback is demoted."""
    _SHUTDOWN.set()


def _demote(record: logging.LogRecord) -> bool:
    if any(rule.matches(record) for rule in RULES):
        return True
    return _SHUTDOWN.is_set() and record.levelno >= logging.ERROR and bool(record.exc_info)


class KafkaNoiseFilter(logging.Filter):
    """Demotes the lines of :data:`RULES` (and kafka tracebacks during a shutdown) to DEBUG: dropped unless the
    logger is enabled for DEBUG, else passed on as a DEBUG line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False to drop ``record``; a kept record may have been rewritten to DEBUG."""
        if not record.name.startswith("kafka") or not _demote(record):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True


def kafka_logger_names() -> list[str]:
    """``kafka`` and the name of every module of the installed kafka-python (their loggers are ``__name__``);
    found without importing it."""
    spec = importlib.util.find_spec("kafka")
    if spec is None or not spec.submodule_search_locations:
        return []
    names = {"kafka", "kafka.coordinator.heartbeat"}  # (the one logger not named after its module)
    for root in map(Path, spec.submodule_search_locations):
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            names.add(".".join(("kafka", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("kafka", *parts)))
    return sorted(names)


_FILTER = KafkaNoiseFilter()


def install() -> None:
    """Put the filter on every kafka-python logger (idempotent)."""
    for name in {*kafka_logger_names(), *(rule.logger for rule in RULES)}:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
