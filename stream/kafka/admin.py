"""Opt-out topic creation and group-offset inspection."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.errors import BrokerError
from stream.kafka.config import common_config
from stream.ports import Partition
from stream.settings import Settings

__all__ = ["committed_offsets", "end_offsets", "ensure_topics"]

LOG = logging.getLogger(__name__)


def ensure_topics(settings: Settings, topics: Iterable[str] | None = None) -> list[str]:
    """Create the configured topics that do not exist yet (idempotent).

    Args:
        settings: connection settings and ``topics`` (partitions, replication factor).
        topics: names to ensure; default: video, queries, candidates, results and dead letters.

    Returns:
        The topics created by this call.

    Raises:
        BrokerError: the broker cannot be reached or refuses the creation.
    """
    t = settings.topics
    names = list(topics) if topics is not None else [t.video, t.queries, t.candidates, t.results, t.dead_letters]
    try:
        admin = KafkaAdminClient(**common_config(settings.kafka, f"{settings.kafka.client_id}-admin"))
    except KafkaError as exc:
        raise BrokerError(f"cannot connect to {settings.kafka.bootstrap_servers}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(n, t.partitions, t.replication_factor) for n in names if n not in existing]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent worker won the race
                admin.create_topics(new)
            LOG.info("created topics %s", ", ".join(n.name for n in new))
        return [n.name for n in new]
    except KafkaError as exc:
        raise BrokerError(f"cannot create topics {names}: {exc}") from exc
    finally:
        admin.close()


def end_offsets(settings: Settings, topic: str) -> dict[Partition, int]:
    """High watermark of every partition of ``topic`` (empty when the topic does not exist)."""
    consumer = KafkaConsumer(**common_config(settings.kafka, f"{settings.kafka.client_id}-offsets"))
    try:
        ids = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, i) for i in sorted(ids)]
        return {Partition(tp.topic, tp.partition): int(o) for tp, o in consumer.end_offsets(tps).items()}
    except KafkaError as exc:
        raise BrokerError(f"cannot read end offsets of {topic}: {exc}") from exc
    finally:
        consumer.close()


def committed_offsets(settings: Settings, group_id: str, topic: str) -> dict[Partition, int]:
    """Offsets committed by ``group_id`` on ``topic`` (partitions without a commit are absent)."""
    consumer = KafkaConsumer(**common_config(settings.kafka, f"{settings.kafka.client_id}-offsets"),
                             group_id=group_id, enable_auto_commit=False)
    try:
        out: dict[Partition, int] = {}
        for i in sorted(consumer.partitions_for_topic(topic) or set()):
            value = consumer.committed(TopicPartition(topic, i))
            if value is not None and value >= 0:
                out[Partition(topic, i)] = int(value)
        return out
    except KafkaError as exc:
        raise BrokerError(f"cannot read committed offsets of {group_id}: {exc}") from exc
    finally:
        consumer.close(autocommit=False)
