"""Topic creation (the only path that creates topics), topic inspection and group-offset inspection."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from stream.errors import BrokerError
from stream.kafka.config import common_config, forbid_auto_create
from stream.ports import Partition
from stream.settings import Settings

__all__ = ["KafkaTopicAdmin", "committed_offsets", "end_offsets", "ensure_topics"]

LOG = logging.getLogger(__name__)


def _names(settings: Settings, topics: Iterable[str] | None) -> list[str]:
    t = settings.topics
    return list(topics) if topics is not None else [t.video, t.queries, t.candidates, t.results, t.dead_letters]


class KafkaTopicAdmin:
    """A :class:`~stream.ports.TopicAdmin` over one ``KafkaAdminClient``, connected on first use and again after a
    failure (a restarted broker). Its metadata requests never create a topic.

    Args:
        settings: connection settings and ``topics`` (partitions and replication factor of created topics).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._admin: KafkaAdminClient | None = None
        self._ids: dict[str, str] = {}

    def _client(self) -> KafkaAdminClient:
        if self._admin is None:
            k = self.settings.kafka
            conf = {"bootstrap_timeout_ms": int(k.producer_recovery_s * 1000),
                    **common_config(k, f"{k.client_id}-admin")}
            try:
                self._admin = KafkaAdminClient(**conf)
            except KafkaError as exc:
                raise BrokerError(f"cannot connect to {k.bootstrap_servers}: {exc}") from exc
        return self._admin

    def _failed(self, what: str, exc: Exception) -> BrokerError:
        self.close()  # reconnect next time
        return BrokerError(f"{what}: {exc}")

    def partitions(self, topics: Collection[str]) -> dict[str, int]:
        """Partition count of each of ``topics`` that exists (missing ones are absent).

        Raises:
            BrokerError: the broker cannot be reached.
        """
        admin = self._client()
        try:
            described = admin.describe_topics(sorted(topics))
        except (KafkaError, OSError) as exc:
            raise self._failed(f"cannot describe topics {sorted(topics)}", exc) from exc
        found = [d for d in described if d.get("error_code", 0) == 0 and d.get("partitions") and d["name"] in topics]
        self._ids = {d["name"]: str(d["topic_id"]) for d in found if d.get("topic_id")}
        return {d["name"]: len(d["partitions"]) for d in found}

    def topic_ids(self) -> dict[str, str]:
        """Ids of the topics the last :meth:`partitions` found (a topic created again gets a new one)."""
        return dict(self._ids)

    def create(self, topics: Collection[str]) -> list[str]:
        """Create those of ``topics`` that are missing with ``topics.partitions`` partitions; returns them.

        Raises:
            BrokerError: the broker cannot be reached or refuses the creation.
        """
        t = self.settings.topics
        new = [NewTopic(n, t.partitions, t.replication_factor) for n in topics if n not in self.partitions(topics)]
        if not new:
            return []
        try:
            with contextlib.suppress(TopicAlreadyExistsError):  # a concurrent worker won the race
                self._client().create_topics(new)
        except (KafkaError, OSError) as exc:
            raise self._failed(f"cannot create topics {[n.name for n in new]}", exc) from exc
        LOG.info("created topics %s with %d partitions", ", ".join(n.name for n in new), t.partitions)
        return [n.name for n in new]

    def close(self) -> None:
        """Close the client (a later call connects again)."""
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()


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
    admin = KafkaTopicAdmin(settings)
    try:
        return admin.create(_names(settings, topics))
    finally:
        admin.close()


def _offsets_consumer(settings: Settings, **conf: Any) -> KafkaConsumer:
    consumer = KafkaConsumer(**common_config(settings.kafka, f"{settings.kafka.client_id}-offsets"), **conf)
    forbid_auto_create(consumer)
    return consumer


def end_offsets(settings: Settings, topic: str) -> dict[Partition, int]:
    """High watermark of every partition of ``topic`` (empty when the topic does not exist)."""
    consumer = _offsets_consumer(settings)
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
    consumer = _offsets_consumer(settings, group_id=group_id, enable_auto_commit=False)
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
