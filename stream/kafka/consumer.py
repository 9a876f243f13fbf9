"""kafka-python consumer behind :class:`stream.ports.MessageSource`."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from stream.errors import BrokerError
from stream.kafka.config import common_config, forbid_auto_create, merge_extra
from stream.kafka.topic_ids import TopicIds
from stream.ports import Partition, RebalanceCallback, Record
from stream.settings import KafkaSettings

__all__ = ["KafkaSource"]

LOG = logging.getLogger(__name__)


def _tp(p: Partition) -> TopicPartition:
    return TopicPartition(p.topic, p.partition)


def _part(tp: TopicPartition) -> Partition:
    return Partition(tp.topic, tp.partition)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python 3 runs listeners on the consumer's IO thread, where blocking consumer calls (``committed``,
    ``commit``) raise. Revocations run there at once (all members revoke before any is assigned: the state must be
    saved now); the caller's callback may only use :meth:`KafkaSource.commit`, which turns asynchronous there.
    Assignments are recorded and handed to the caller's callback in the polling thread (see :meth:`KafkaSource.poll`).
    """

    def __init__(self, source: KafkaSource, on_assign: RebalanceCallback, on_revoke: RebalanceCallback) -> None:
        self.source = source
        self.on_assign = on_assign
        self.on_revoke = on_revoke

    def on_partitions_revoked(self, revoked: Collection[TopicPartition]) -> None:
        self.source._awaiting_assignment = True
        parts = [_part(tp) for tp in revoked]
        self.source._in_listener.active = True
        try:
            self.on_revoke(parts)
        finally:
            self.source._in_listener.active = False
            for p in parts:
                self.source._positions.pop(p, None)
                self.source._pending_assign.discard(p)

    def on_partitions_assigned(self, assigned: Collection[TopicPartition]) -> None:
        self.source._awaiting_assignment = False
        self.source._note_generation()
        self.source._pending_assign.update(_part(tp) for tp in assigned)
        self.source._assign_generation += 1


class KafkaSource:
    """A kafka-python ``KafkaConsumer`` with manual commits, implementing :class:`~stream.ports.MessageSource`.

    Args:
        kafka: connection settings.
        client_id: client id reported to the broker.
        group_id: consumer group for :meth:`subscribe`; None for :meth:`assign_all` only.
        max_poll_records: default cap of records per poll.
        max_partition_fetch_bytes: per-partition fetch size (at least one message is always returned).
        fetch_max_wait_ms: how long the broker may hold a fetch without data (lower for latency-bound loops).

    Raises:
        BrokerError: the bootstrap servers cannot be reached.
    """

    def __init__(self, kafka: KafkaSettings, *, client_id: str, group_id: str | None = None,
                 max_poll_records: int = 100, max_partition_fetch_bytes: int | None = None,
                 fetch_max_wait_ms: int = 500) -> None:
        conf: dict[str, Any] = {
            **common_config(kafka, client_id),
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": kafka.auto_offset_reset,
            "max_poll_records": max_poll_records,
            "max_partition_fetch_bytes": max_partition_fetch_bytes or max(kafka.max_request_size, 1_048_576),
            "allow_auto_create_topics": False,
            "fetch_max_wait_ms": fetch_max_wait_ms,
        }
        if group_id is not None:
            conf.update(session_timeout_ms=kafka.session_timeout_ms, heartbeat_interval_ms=kafka.heartbeat_interval_ms,
                        max_poll_interval_ms=kafka.max_poll_interval_ms)
        conf = merge_extra(conf, kafka.consumer_extra)
        try:
            self._consumer = KafkaConsumer(**conf)
        except KafkaError as exc:
            raise BrokerError(f"cannot connect consumer to {kafka.bootstrap_servers}: {exc}") from exc
        forbid_auto_create(self._consumer)  # the option alone is ignored by kafka-python 3.0.12
        self._positions: dict[Partition, int] = {}
        self._end_checked = 0.0
        self._ends: dict[Partition, int] = {}
        self._on_assign: RebalanceCallback | None = None
        self._on_reset: RebalanceCallback | None = None
        self._reset_checked = 0.0
        self._pending_assign: set[Partition] = set()
        self._assign_generation = 0
        self._sought: set[Partition] = set()
        self._in_listener = threading.local()
        self._ids = TopicIds()  # which log of each assigned topic the positions refer to
        self._listener: _Listener | None = None
        self._topics: list[str] = []
        self._group_generation: tuple[Any, Any] | None = None  # (member id, generation) of the last assignment
        self._stale_assignment = False
        self._rejoin_requested = False
        self._rejoin_requested_at = 0
        self._awaiting_assignment = False  # a group member between a revocation (or subscribe) and its assignment
        self._join_wait_ms = kafka.session_timeout_ms + 2_000  # tansu holds a JoinGroup ~session_timeout_ms / 2

    # ------------------------------------------------------------------ membership
    def subscribe(self, topics: Collection[str], *, on_assign: RebalanceCallback,
                  on_revoke: RebalanceCallback, on_reset: RebalanceCallback | None = None) -> None:
        """Join the group for ``topics``; the callbacks run inside :meth:`poll` (``on_revoke`` on the client's IO
        thread, where :meth:`commit` does not wait; ``on_assign`` and ``on_reset`` in the polling thread, before any
        record of those partitions is returned)."""
        self._on_assign = on_assign
        self._on_reset = on_reset
        self._topics = list(topics)
        self._listener = _Listener(self, on_assign, on_revoke)
        self._awaiting_assignment = True
        self._consumer.subscribe(self._topics, listener=self._listener)

    def _note_generation(self) -> None:
        """On an assignment (IO thread): the broker must have started a new group generation for it.

        Tansu answers a rejoin of the same member with the same generation and the assignment it stored for that
        generation, however the leader assigned this time: a member that joined while its topic was missing (a
        broker restarted empty) stays with no partition, and one that rejoins after a partition-count change keeps
        the old partitions. A Kafka broker always starts a new generation. Such an assignment is never handed to
        the caller: :meth:`poll` leaves the group and joins again as a new member (:meth:`_rejoin`).
        """
        gen = getattr(getattr(self._consumer, "_coordinator", None), "_generation", None)
        key = (getattr(gen, "member_id", None), getattr(gen, "generation_id", None))
        if key[1] is not None and key == self._group_generation:
            self._stale_assignment = True
        self._group_generation = key

    def _complete_join(self) -> None:
        """Drive a group join to its end in one call (up to ``session_timeout_ms`` + 2 s).

        kafka-python 3.0.12 keeps a join in flight across short polls, but a join that a metadata change started
        (the leader saw its topic vanish or change) stops being needed once the leader has computed the assignment,
        so no later poll applies its result: the member stays without partitions (and without an assignment
        callback) indefinitely. Loops poll for 0-500 ms and a tansu join takes about half the session timeout, so
        while an assignment is awaited the join stays needed and is awaited whole (a join whose result was dropped
        that way is made again).
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None and hasattr(coordinator, "poll"):
            if hasattr(coordinator, "rejoin_needed"):
                coordinator.rejoin_needed = True  # cleared by kafka-python when the join's result is applied
            coordinator.poll(timeout_ms=self._join_wait_ms)

    def request_rejoin(self, topic_ids: Mapping[str, str] | None = None) -> None:
        """Leave the group and join again as a new member at the next :meth:`poll` (any thread may call this).

        For a topic that was deleted and created again (a broker restarted empty), or came back with another
        partition count: tansu answers the rejoin of a known member with its stale assignment (see
        :meth:`_note_generation`), and only the group leader notices a partition-count change at all.

        Args:
            topic_ids: the topics' new ids as the admin client saw them (``{name: id}``). The rejoin's assignment
                refers to them even when this client's metadata still names the old ids, so the metadata refresh
                that later shows the new ids does not make the member join a second time.
        """
        self._ids.announce(topic_ids or {})
        self._rejoin_requested = True
        self._rejoin_requested_at = self._assign_generation

    def _rejoin_due(self) -> bool:
        """A requested rejoin, once no join is in flight (leaving then would race it); dropped when the group
        assigned again by itself since the request (a stale answer to that join is caught by
        :meth:`_note_generation`)."""
        if not self._rejoin_requested:
            return False
        if self._assign_generation != self._rejoin_requested_at:
            self._rejoin_requested = False
            return False
        coordinator = getattr(self._consumer, "_coordinator", None)
        stable = getattr(coordinator, "state", "<stable>") == "<stable>"  # kafka.structs.MemberState.STABLE
        need = getattr(coordinator, "need_rejoin", None)
        return stable and not (need() if callable(need) else False)

    def _rejoin(self) -> None:
        """Revoke what the caller holds, leave the group, and join again as a new member."""
        stale = self._stale_assignment
        self._stale_assignment = self._rejoin_requested = False
        self._group_generation = None
        held = [] if stale else sorted(self.assignment() - self._pending_assign)
        LOG.warning("group %s: leaving and joining again as a new member (%s)",
                    getattr(self._consumer, "config", {}).get("group_id"),
                    "the broker answered a rejoin with the previous generation's assignment" if stale
                    else "a topic was recreated or changed its partition count")
        self._pending_assign.clear()
        self._awaiting_assignment = True
        if self._listener is not None:  # the caller saves its state, as in a rebalance
            self._listener.on_partitions_revoked([_tp(p) for p in held])
        try:
            self._consumer.unsubscribe()  # LeaveGroup: the next join gets a new member id and a new generation
            self._consumer.subscribe(self._topics, listener=self._listener)
        except KafkaError as exc:
            raise BrokerError(f"cannot rejoin the group: {exc}") from exc

    def assign_all(self, topic: str, *, from_end: bool) -> list[Partition]:
        """Read every partition of ``topic`` outside any group; resolves the start positions before returning.

        Partitions assigned already keep their positions (a call after the partition count changed adds the new
        ones); ``from_end`` applies to the others.
        """
        try:
            ids = self._consumer.partitions_for_topic(topic)
        except KafkaError as exc:
            raise BrokerError(f"cannot list partitions of {topic}: {exc}") from exc
        if not ids:
            return []
        before = set(self._consumer.assignment())
        tps = [TopicPartition(topic, i) for i in sorted(ids)]
        if self._recreated(topic):  # the partitions kept name another log now: read them from their beginning
            before = {tp for tp in before if tp.topic != topic}
        new = [tp for tp in tps if tp not in before]
        self._consumer.assign(tps)
        for tp in before - set(tps):
            self._positions.pop(_part(tp), None)
        if new:
            if from_end:
                self._consumer.seek_to_end(*new)
            else:
                self._consumer.seek_to_beginning(*new)
        try:
            for tp in new:  # resolve the lazy seek now, so nothing produced after this call is missed
                self._positions[_part(tp)] = int(self._consumer.position(tp))
        except KafkaError as exc:
            raise BrokerError(f"cannot resolve the positions of {topic}: {exc}") from exc
        return [_part(tp) for tp in tps]

    def assignment(self) -> set[Partition]:
        """Partitions currently assigned."""
        return {_part(tp) for tp in self._consumer.assignment()}

    def partitions_for(self, topic: str) -> list[Partition]:
        """Every partition of ``topic`` from the cluster metadata (empty when the topic is missing)."""
        try:
            ids = self._consumer.partitions_for_topic(topic)
        except KafkaError as exc:
            raise BrokerError(f"cannot list partitions of {topic}: {exc}") from exc
        return [Partition(topic, i) for i in sorted(ids or ())]

    # ------------------------------------------------------------------ reading
    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        """Up to ``max_records`` records (in partition order), waiting at most ``timeout_s``.

        Raises:
            BrokerError: the client reports an error that is not a transient connection problem.
        """
        generation = self._assign_generation
        try:
            if self._awaiting_assignment and self._topics:
                self._complete_join()
            batches = self._consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as exc:
            raise BrokerError(f"poll failed: {exc}") from exc
        if self._listener is not None and (self._stale_assignment or self._rejoin_due()):
            self._rejoin()  # a stale assignment is never handed to the caller, nor what was fetched for it
            return []
        fresh: set[Partition] = set()
        if self._assign_generation != generation or self._pending_assign:
            fresh = self._deliver_assignment()
        fresh |= self._check_resets()
        out: list[Record] = []
        for tp in sorted(batches, key=lambda t: (t.topic, t.partition)):
            part = _part(tp)
            if part in fresh:  # fetched before the callback chose the start offset: read again from there
                if batches[tp] and part not in self._sought:
                    self.seek(part, batches[tp][0].offset)
                continue
            for r in batches[tp]:
                out.append(Record(r.topic, r.partition, r.offset, r.key, r.value,
                                  [(k, v) for k, v in (r.headers or [])], int(r.timestamp)))
            if batches[tp]:
                self._positions[_part(tp)] = batches[tp][-1].offset + 1
        return out

    def _topic_id(self, topic: str) -> str | None:
        """The topic's id in the client's cluster metadata (None when unknown or missing)."""
        cluster = getattr(self._consumer, "_cluster", None)
        tid = cluster.topic_id(topic) if cluster is not None and hasattr(cluster, "topic_id") else None
        return str(tid) if tid is not None and getattr(tid, "int", 1) != 0 else None

    def _recreated(self, topic: str) -> bool:
        """Record ``topic``'s newest id; whether it changed (deleted and created again: a broker restarted empty)."""
        return self._ids.record(topic, self._topic_id(topic))

    def _id_changed(self, topic: str) -> bool:
        """Whether ``topic`` has a newer id than when it was last assigned (never on brokers without topic ids)."""
        return self._ids.changed(topic, self._topic_id(topic))

    def _check_resets(self) -> set[Partition]:
        """Partitions of a recreated topic: read again from their beginning (checked every second).

        A topic is recreated when its id changes in the cluster metadata (a broker restarted empty; checked for
        :meth:`assign_all` only), or when a partition's log ends before our position. The id is the reliable sign:
        a Kafka broker answers a fetch beyond the log end with OFFSET_OUT_OF_RANGE, but tansu answers with an empty
        batch and its (smaller) high watermark, and once the new log grows past our position, records before it
        would be skipped silently. The high watermark of fetch responses is exact on tansu (its ListOffsets is not).
        """
        now = time.monotonic()
        if now - self._reset_checked < 1.0:
            return set()
        self._reset_checked = now
        reset: set[Partition] = set()
        assigned = self._consumer.assignment()
        # a group member joins again instead (seeking while it rebalances stalls it); its new assignment starts
        # where the group decides, and nothing read from the old log is committed meanwhile (commit)
        if self._topics and not self._rejoin_requested and any(self._id_changed(t) for t in self._topics):
            self.request_rejoin()
        for topic in sorted({tp.topic for tp in assigned} if not self._topics else ()):
            if self._recreated(topic):
                LOG.warning("%s was recreated (its topic id changed): reading its partitions again from the "
                            "beginning", topic)
                for tp in assigned:
                    if tp.topic == topic:
                        self.seek_to_beginning(_part(tp))
                        reset.add(_part(tp))
        for tp in assigned:
            part = _part(tp)
            high = self._consumer.highwater(tp)
            pos = self._positions.get(part)
            if part not in reset and high is not None and pos is not None and int(high) < pos:
                LOG.warning("%s ends at %d, before the read position %d: the topic was recreated; reading it again "
                            "from the beginning", part, high, pos)
                self.seek_to_beginning(part)
                reset.add(part)
        if reset and self._on_reset is not None:
            self._on_reset(sorted(reset))
        return reset

    def _deliver_assignment(self) -> set[Partition]:
        parts = set(self._pending_assign) & self.assignment()
        for topic in {p.topic for p in parts}:  # the assignment callback chooses the start of these partitions
            self._recreated(topic)
        self._pending_assign.clear()
        self._sought.clear()
        if self._on_assign is not None:
            self._on_assign(sorted(parts))
        return parts

    def seek(self, partition: Partition, offset: int) -> None:
        """Read ``partition`` from ``offset`` next."""
        self._consumer.seek(_tp(partition), offset)
        self._positions[partition] = offset
        self._sought.add(partition)

    def seek_to_beginning(self, partition: Partition) -> None:
        """Read ``partition`` from its first retained record next."""
        self._consumer.seek_to_beginning(_tp(partition))
        self._positions.pop(partition, None)
        self._sought.add(partition)

    def end_offsets(self, partitions: Collection[Partition]) -> dict[Partition, int]:
        """The offset after the last record of each partition (its high watermark), asked of the broker now.

        tansu (0.5) answers the base offset of the last record batch plus one: short when that batch holds several
        records. :meth:`highwater` (from fetch responses) is right.

        Raises:
            BrokerError: the broker does not answer.
        """
        try:
            ends = self._consumer.end_offsets([_tp(p) for p in partitions])
        except KafkaError as exc:
            raise BrokerError(f"cannot read the end offsets: {exc}") from exc
        return {_part(tp): int(o) for tp, o in ends.items()}

    def highwater(self, partition: Partition) -> int | None:
        """The high watermark of an assigned partition as of the last fetch from it (None before any)."""
        value = self._consumer.highwater(_tp(partition))
        return None if value is None else int(value)

    def offsets_for_time(self, partitions: Collection[Partition], timestamp_s: float) -> dict[Partition, int | None]:
        """Per partition, the first offset whose Kafka timestamp is at or after ``timestamp_s`` (ListOffsets by
        timestamp); None when no record is that recent.

        Apache Kafka answers "none" with no offset; tansu answers offset 0 with timestamp -1. Both read as None (a
        real answer always carries the record's timestamp).

        Raises:
            BrokerError: the broker does not answer or does not support the request.
        """
        try:
            found = self._consumer.offsets_for_times({_tp(p): int(timestamp_s * 1000) for p in partitions})
        except KafkaError as exc:
            raise BrokerError(f"cannot look up offsets by time: {exc}") from exc
        return {_part(tp): None if hit is None or hit.timestamp is None or hit.timestamp < 0 else int(hit.offset)
                for tp, hit in found.items()}

    def committed(self, partition: Partition) -> int | None:
        """The group's committed offset for ``partition`` (None when nothing was committed)."""
        try:
            value = self._consumer.committed(_tp(partition))
        except KafkaError as exc:
            raise BrokerError(f"cannot read the committed offset of {partition}: {exc}") from exc
        return None if value is None or value < 0 else int(value)

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit ``offsets`` for partitions still assigned (a commit after a rebalance is skipped, logged).

        Inside a revocation callback (the client's IO thread) the commit is sent without waiting for the answer.

        Raises:
            BrokerError: the broker refused the commit for another reason.
        """
        owned = self.assignment()
        stale = {t for t in {p.topic for p in offsets} if self._ids.gone(t, self._topic_id(t))}
        if stale:  # offsets of a log that no longer exists would make the new one skip its first records
            LOG.warning("not committing offsets of %s: the topic was deleted or recreated since they were read",
                        ", ".join(sorted(stale)))
        todo = {_tp(p): OffsetAndMetadata(o, "", -1) for p, o in offsets.items() if p in owned and p.topic not in stale}
        if not todo:
            return
        if getattr(self._in_listener, "active", False):
            try:
                self._consumer.commit_async(todo, callback=self._async_committed)
            except KafkaError as exc:
                LOG.warning("commit during a rebalance failed: %s", exc)
            return
        try:
            self._consumer.commit(todo)
        except CommitFailedError as exc:
            LOG.warning("commit skipped after a rebalance: %s", exc)
        except KafkaError as exc:
            raise BrokerError(f"commit failed: {exc}") from exc

    @staticmethod
    def _async_committed(offsets: Any, response: Any) -> None:
        if isinstance(response, BaseException):
            LOG.warning("commit during a rebalance failed: %s", response)

    def lag(self) -> dict[Partition, int]:
        """Messages between the read position and the high watermark, per assigned partition (when known)."""
        out: dict[Partition, int] = {}
        missing: list[TopicPartition] = []
        for tp in self._consumer.assignment():
            part = _part(tp)
            high = self._consumer.highwater(tp)
            if high is None:
                missing.append(tp)
                high = self._ends.get(part)
            pos = self._positions.get(part)
            if high is not None and pos is not None:
                out[part] = max(0, int(high) - pos)
        now = time.monotonic()
        if missing and now - self._end_checked > 5.0:  # the watermark is unknown until the first fetch
            self._end_checked = now
            try:
                ends = self._consumer.end_offsets(missing, timeout_ms=2000)
                self._ends.update({_part(tp): int(o) for tp, o in ends.items()})
            except KafkaError as exc:
                LOG.debug("end offsets unavailable: %s", exc)
        return out

    def close(self) -> None:
        """Leave the group (LeaveGroup, so the partitions move at once) and close the connection."""
        try:
            self._consumer.close(autocommit=False)
        except KafkaError as exc:  # closing must not mask the shutdown path
            LOG.warning("consumer close failed: %s", exc)
