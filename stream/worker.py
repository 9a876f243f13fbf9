"""The worker: ingest, query and merge loops wired to a broker, an extractor, the index and the HTTP endpoint.

Threads (one consumer each, so no client is shared between threads)::

    l2g-ingest   IngestLoop  group ingest.group_id on the video topic     decode, extract, index, snapshot+commit
    l2g-query    QueryLoop   every partition of the query topic, no group  extract the query, stage 1, partials
    l2g-merge    MergeLoop   group query.merge_group_id on candidates      merge, stage 2, results
    l2g-topics   TopicWatch  the admin client                              topics exist (recreated), producer delivers
    l2g-http     HealthServer                                              /metrics /healthz /readyz
    l2g-progress ProgressLog                                               an INFO line every progress_interval_s

The ingest and query loops use separate extractor instances (a query never waits for an ingest batch). Thread pools
of torch and FAISS are set from ``runtime.torch_threads`` / ``runtime.faiss_threads``, and the process-wide FAISS
settings applied (``l2g_core.index.backend.configure_faiss``), before anything runs. What a failure in a loop does
(retry, stop) is decided by :class:`stream.failures.LoopFailurePolicy`.

Shutdown (SIGTERM or SIGINT, or :meth:`Worker.stop`): each loop finishes its current poll (the ingest batch in
flight is indexed), the ingest loop snapshots and commits, and every consumer closes, leaving its group so its
partitions move at once. The worker is ready (``/readyz``, ``l2g_ready``) once the extractor is loaded, every
enabled loop has its partitions (snapshots loaded; the query loop reads every partition of the query topic), every
topic exists and the producer delivers (:mod:`stream.topics`); it is not ready again while any of that is lost (a
broker restarted empty: the topics are recreated with ``topics.partitions``, or awaited when ``topics.create`` is
false).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from types import FrameType
from typing import Protocol

from l2g_core.index.backend import configure_faiss
from stream import lognoise
from stream.deadletter import DeadLetterPublisher
from stream.devices import DeviceProbe, check_devices, resolve_devices
from stream.errors import BrokerError, ConfigurationError
from stream.failures import LoopFailurePolicy
from stream.health import Health, HealthServer
from stream.ingest import IngestLoop
from stream.metrics import StreamMetrics
from stream.ports import FeatureExtractor, Loop, MessageSink, MessageSource, TopicAdmin
from stream.progress import ProgressLog
from stream.query import MergeLoop, QueryLoop
from stream.settings import RuntimeSettings, Settings
from stream.settings_check import check_settings
from stream.store import PartitionedIndex
from stream.topics import TopicWatch

__all__ = ["Connector", "KafkaConnector", "Worker", "configure_threads", "make_extractor"]

LOG = logging.getLogger(__name__)


QUERY_FETCH_WAIT_MS = 100
"""How long the broker may hold an empty fetch of the query path's consumers (queries, candidate partials). A fetch
returns as soon as a record arrives, so this bounds idle wake-ups, not latency: at 20 ms the two idle consumers woke
the worker 100 times a second and slowed ingest's extraction from 107 to 142 ms per frame (720p clip, default
extractor); at 100 ms it was 114 ms, with the same idle query latency (docs/scaling.md, sixth session)."""


class Connector(Protocol):
    """Creates the clients of a worker (Kafka in production, :class:`stream.testing.MemoryConnector` in tests)."""

    def source(self, *, client_id: str, group_id: str | None, max_poll_records: int,
               low_latency: bool = False) -> MessageSource:
        """A consumer (a group member when ``group_id`` is set; ``low_latency`` for the query path)."""
        ...

    def sink(self, *, client_id: str) -> MessageSink:
        """A producer."""
        ...

    def ensure_topics(self, settings: Settings) -> None:
        """Create the configured topics that are missing."""
        ...

    def topic_admin(self, settings: Settings) -> TopicAdmin:
        """Inspects and creates topics (the worker's ``topics`` loop)."""
        ...


class KafkaConnector:
    """kafka-python clients from ``settings.kafka``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def source(self, *, client_id: str, group_id: str | None, max_poll_records: int,
               low_latency: bool = False) -> MessageSource:
        from stream.kafka import KafkaSource

        return KafkaSource(self.settings.kafka, client_id=client_id, group_id=group_id,
                           max_poll_records=max_poll_records,
                           fetch_max_wait_ms=QUERY_FETCH_WAIT_MS if low_latency else 500)

    def sink(self, *, client_id: str) -> MessageSink:
        from stream.kafka import KafkaSink

        return KafkaSink(self.settings.kafka, client_id=client_id)

    def ensure_topics(self, settings: Settings) -> None:
        from stream.kafka import ensure_topics

        ensure_topics(settings)

    def topic_admin(self, settings: Settings) -> TopicAdmin:
        from stream.kafka import KafkaTopicAdmin

        return KafkaTopicAdmin(settings)


def configure_threads(runtime: RuntimeSettings) -> None:
    """Set the torch and FAISS thread pools (0 leaves a library's default)."""
    if runtime.torch_threads:
        import torch

        torch.set_num_threads(runtime.torch_threads)
    if runtime.faiss_threads:
        import faiss

        faiss.omp_set_num_threads(runtime.faiss_threads)


def make_extractor(settings: Settings) -> FeatureExtractor:
    """A new, not yet set up extractor from ``settings.extractor`` (a ``plugins.Extractor``).

    Raises:
        ConfigurationError: unknown extractor or bad options.
    """
    from plugins import PluginError, get_extractor

    try:
        return get_extractor(settings.extractor.name, **settings.extractor.options)
    except (PluginError, ImportError) as exc:
        raise ConfigurationError(f"cannot create extractor {settings.extractor.name!r}: {exc}") from exc


def _version() -> str:
    try:
        return version("l2g-stream")
    except PackageNotFoundError:
        return "0+unknown"


class Worker:
    """One worker process (see the module docstring).

    Args:
        settings: all settings.
        connector: client factory (default: Kafka from ``settings.kafka``).
        metrics: registry holder (default: a fresh one).
        extractor_factory: builds an extractor (default: :func:`make_extractor`); called twice (ingest, queries).
    """

    def __init__(self, settings: Settings, *, connector: Connector | None = None,
                 metrics: StreamMetrics | None = None,
                 extractor_factory: Callable[[Settings], FeatureExtractor] | None = None) -> None:
        self.settings = settings
        self.worker_id = settings.runtime.worker_id
        self.connector: Connector = connector or KafkaConnector(settings)
        self.metrics = metrics or StreamMetrics()
        self.health = Health(settings.http.liveness_timeout_s, self.metrics)
        self._extractor_factory = extractor_factory or make_extractor
        self.server: HealthServer | None = None
        self.index: PartitionedIndex | None = None
        self.ingest: IngestLoop | None = None
        self.query: QueryLoop | None = None
        self.merge: MergeLoop | None = None
        self.topics: TopicWatch | None = None
        self.extractors: list[FeatureExtractor] = []
        self.sink: MessageSink | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: BaseException | None = None
        self.failure_policy = LoopFailurePolicy()
        self._opened = False

    # ------------------------------------------------------------------ setup
    @property
    def ready(self) -> bool:
        """Extractor loaded, every enabled loop assigned, every topic there and the producer delivering."""
        return self.health.ready()[0]

    @property
    def http_url(self) -> str | None:
        """Base URL of ``/metrics``, ``/healthz`` and ``/readyz`` (None when disabled)."""
        return self.server.url if self.server is not None else None

    def open(self) -> Worker:
        """Create everything and join the groups, without starting threads (:meth:`step` drives the loops).

        Raises:
            ConfigurationError: bad extractor or index settings, a typo in a free-form option map
                (:func:`stream.settings_check.check_settings`), or the HTTP port in use.
            BrokerError: the broker cannot be reached.
        """
        if self._opened:
            return self
        s = self.settings
        check_settings(s, extractor=self._extractor_factory is make_extractor)  # before anything starts
        probe = DeviceProbe.detect()
        check_devices(s, probe)  # a cuda setting without CUDA (or with faiss-cpu) fails here, loudly
        configure_threads(s.runtime)
        configure_faiss(gpu=s.index.device != "cpu" and probe.faiss_gpus > s.index.gpu_id, device=s.index.gpu_id)
        cid = f"{s.kafka.client_id}-{self.worker_id}"
        retrieval = s.index.retrieval_config()  # invalid options fail before anything starts
        self.health.set_condition("extractor", False)
        if s.http.enabled:
            self.server = HealthServer(self.health, self.metrics, s.http.host, s.http.port,
                                       request_timeout_s=s.http.request_timeout_s,
                                       max_connections=s.http.max_connections).start()
        if s.topics.create:
            self.connector.ensure_topics(s)
        t0 = time.perf_counter()
        ingest_extractor = self._extractor_factory(s)
        ingest_extractor.setup()
        self.extractors.append(ingest_extractor)
        query_extractor = ingest_extractor
        if s.query.enabled and s.ingest.enabled:
            query_extractor = self._extractor_factory(s)
            query_extractor.setup()
            self.extractors.append(query_extractor)
        name = ingest_extractor.name
        # the snapshot tag: features of other options or other weights (sha256) never load into this index
        identity = ingest_extractor.snapshot_identity()
        LOG.info("extractor %s ready (%d-d local, %d-d global) in %.1f s", name, ingest_extractor.local_dim,
                 ingest_extractor.global_dim, time.perf_counter() - t0)
        self.health.set_condition("extractor", True)
        self.index = PartitionedIndex.from_settings(s.index, extractor=name, options=identity,
                                                    local_dim=ingest_extractor.local_dim,
                                                    global_dim=ingest_extractor.global_dim)
        devices = resolve_devices(str(getattr(ingest_extractor, "device", "cpu")), self.index.config, retrieval,
                                  probe)
        LOG.info("%s", devices.describe())
        self.metrics.build_info.info({"version": _version(), "extractor": name, "worker": self.worker_id,
                                      **devices.labels()})
        self.sink = self.connector.sink(client_id=cid)
        self.topics = TopicWatch(s, self.connector.topic_admin(s), self.sink, health=self.health,
                                 on_changed=self._topics_changed)
        self.topics.start()
        dlq = DeadLetterPublisher(self.sink, s.topics.dead_letters, self.worker_id, self.metrics,
                                  s.kafka.max_message_bytes)
        if s.ingest.enabled:
            self.ingest = IngestLoop(
                s, self.connector.source(client_id=f"{cid}-ingest", group_id=s.ingest.group_id,
                                         max_poll_records=s.ingest.max_poll_records),
                self.index, ingest_extractor, extractor_name=name, dead_letters=dlq, metrics=self.metrics,
                health=self.health, worker_id=self.worker_id)
            self.ingest.start()
        if s.query.enabled:
            self.query = QueryLoop(
                s, self.connector.source(client_id=f"{cid}-query", group_id=None, max_poll_records=16,
                                         low_latency=True),
                self.sink, self.index, query_extractor, retrieval, metrics=self.metrics, health=self.health,
                worker_id=self.worker_id)
            self.query.start()
            self.merge = MergeLoop(
                s, self.connector.source(client_id=f"{cid}-merge", group_id=s.query.merge_group_id,
                                         max_poll_records=64, low_latency=True),
                self.sink, retrieval, dead_letters=dlq, metrics=self.metrics, health=self.health,
                worker_id=self.worker_id)
            self.merge.start()
        self._opened = True
        return self

    def _topics_changed(self, changed: dict[str, str | None]) -> None:
        """Topics came back or changed (the ``topics`` loop, ``{name: new id}``): the group consumers of those join
        again as new members at their next poll, knowing the new ids, and the worker is not ready until their group
        assigns again (the loop's assignment callback sets the condition; the query loop follows its topic itself).
        """
        t = self.settings.topics
        for topic, loop, condition in ((t.video, self.ingest, "ingest_assigned"),
                                       (t.candidates, self.merge, "merge_assigned")):
            rejoin = getattr(getattr(loop, "source", None), "request_rejoin", None)
            if topic in changed and rejoin is not None:
                self.health.set_condition(condition, False)
                tid = changed[topic]
                rejoin({topic: tid} if tid is not None else None)

    # ------------------------------------------------------------------ running
    def loops(self) -> list[tuple[str, Loop]]:
        """``(name, loop)`` of the enabled loops."""
        named: list[tuple[str, Loop | None]] = [("ingest", self.ingest), ("query", self.query), ("merge", self.merge),
                                                ("topics", self.topics)]
        return [(n, lp) for n, lp in named if lp is not None]

    def step(self) -> None:
        """One iteration of every loop in the calling thread (tests and single-threaded tools)."""
        for _, loop in self.loops():
            if loop is self.topics:
                self.topics.poll()  # (its run_once sleeps between checks)
            else:
                loop.run_once()

    def start(self) -> Worker:
        """:meth:`open`, then run every loop in its own thread."""
        self.open()
        for name, loop in self.loops():
            t = threading.Thread(target=self._run_loop, args=(name, loop), name=f"l2g-{name}", daemon=True)
            self._threads.append(t)
            t.start()
        interval = self.settings.runtime.progress_interval_s
        if interval > 0:
            progress = ProgressLog(self.metrics, *((self.ingest.shedder, self.ingest.lag) if self.ingest else ()))
            t = threading.Thread(target=self._run_progress, args=(progress, interval), name="l2g-progress",
                                 daemon=True)
            self._threads.append(t)
            t.start()
        LOG.info("worker %s started (%s)", self.worker_id, ", ".join(n for n, _ in self.loops()))
        return self

    def _run_progress(self, progress: ProgressLog, interval_s: float) -> None:
        """Log the progress line every ``interval_s`` until stopped (``runtime.progress_interval_s``)."""
        while not self._stop.wait(interval_s):
            try:
                progress.log()
            except Exception:  # a progress line must never stop the worker
                LOG.exception("progress line failed")

    def _run_loop(self, name: str, loop: Loop) -> None:
        """Run ``loop`` until stopped; :attr:`failure_policy` decides what an exception does (stream.failures)."""
        policy = self.failure_policy
        backoff = policy.first_backoff_s
        try:
            while not self._stop.is_set():
                try:
                    loop.run_once()
                    backoff = policy.first_backoff_s
                except policy.retry_on as exc:  # BrokerError: back off and poll again
                    LOG.warning("%s loop: %s (retrying in %.1f s)", name, exc, backoff)
                    self._stop.wait(backoff)
                    backoff = policy.next_backoff(backoff)
        except BaseException as exc:  # anything else stops the worker (ExtractorCrashError included)
            LOG.exception("%s loop failed; stopping the worker", name)
            self.error = exc
            self._stop.set()
        finally:
            try:
                loop.close()
            except Exception:
                LOG.exception("closing the %s loop failed", name)

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until ready (or stopped, or ``timeout_s``); returns readiness."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.ready:
                return True
            time.sleep(0.05)
        return self.ready

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (by a signal, :meth:`stop`, or a failed loop)."""
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask every loop to finish its current poll and close (returns at once)."""
        self._stop.set()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Graceful shutdown: finish the current batches, snapshot and commit, leave the groups, release."""
        self._stop.set()
        if self._threads:
            deadline = time.monotonic() + timeout_s
            for t in self._threads:
                t.join(max(0.1, deadline - time.monotonic()))
                if t.is_alive():
                    LOG.error("%s did not stop within %.0f s", t.name, timeout_s)
            self._threads = []
        elif self._opened:
            for name, loop in self.loops():
                try:
                    loop.close()
                except Exception:
                    LOG.exception("closing the %s loop failed", name)
        self._release()

    def _release(self) -> None:
        if self.sink is not None:
            with contextlib.suppress(BrokerError):
                self.sink.flush(10.0)
            self.sink.close()
            self.sink = None
        for ex in self.extractors:
            with contextlib.suppress(Exception):
                ex.close()
        self.extractors = []
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.health.set_condition("stopped", False)
        self._opened = False

    def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT (or a loop fails), then shut down gracefully.

        Returns:
            0 after a requested stop, 1 when a loop failed.
        """

        def handler(signum: int, frame: FrameType | None) -> None:
            if self._stop.is_set():
                raise KeyboardInterrupt  # a second signal: stop waiting for the graceful shutdown
            LOG.info("%s received: shutting down gracefully", signal.Signals(signum).name)
            lognoise.shutdown_started()  # requests in flight fail while the clients close: not errors
            self._stop.set()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self._stop.wait(0.5):
                pass
        finally:
            self.stop()
            for sig, h in previous.items():
                signal.signal(sig, h)
        return 1 if self.error is not None else 0

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
