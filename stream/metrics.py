"""Every Prometheus metric of a worker, defined in one place on a per-worker registry.

Names use base units (seconds, bytes) and the ``l2g_`` prefix; counters end in ``_total``. Each
:class:`StreamMetrics` owns its own :class:`~prometheus_client.CollectorRegistry`, so several workers (tests,
the demo) can live in one process. The dashboard in ``deploy/`` is built on these exact names:

Counters
    ``l2g_frames_decoded_total{camera}``, ``l2g_frames_sampled_total{camera}``,
    ``l2g_frames_skipped_total{camera,reason}`` (reason: sampling | load_shed | duplicate | too_old | corrupt),
    ``l2g_frames_indexed_total{camera}``, ``l2g_queries_total{mode,outcome}`` (outcome: ok | partial | error),
    ``l2g_dead_letters_total{stage,reason}``, ``l2g_chunks_consumed_total{topic,partition}``,
    ``l2g_index_evicted_frames_total``, ``l2g_rebalances_total``, ``l2g_commits_total``,
    ``l2g_snapshot_failures_total`` (a failed snapshot is retried; its offsets are not committed meanwhile),
    ``l2g_extractor_errors_total{extractor}`` (extractor failures other than rejected input; see ``stream.failures``)
Histograms
    ``l2g_query_latency_seconds{stage}`` (stage: queue, decode_image, extract, stage1, merge_wait, stage2,
    total; ``merge_wait`` includes the slowest worker's decode_image, extract and stage1),
    ``l2g_query_end_to_end_seconds`` (query ``sent_at`` to result published),
    ``l2g_extractor_batch_seconds{extractor}``, ``l2g_extractor_batch_frames{extractor}``,
    ``l2g_decode_chunk_seconds``, ``l2g_snapshot_seconds``
Gauges
    ``l2g_index_frames``, ``l2g_index_features``, ``l2g_index_bytes``, ``l2g_index_time_span_seconds``,
    ``l2g_index_newest_timestamp_seconds``, ``l2g_index_oldest_timestamp_seconds``,
    ``l2g_ingest_freshness_seconds``, ``l2g_consumer_lag_messages{topic,partition}``,
    ``l2g_consumer_lag_seconds{topic,partition}`` (0 when caught up, else the wall clock minus the Kafka timestamp of
    the last message consumed: see :mod:`stream.lag`),
    ``l2g_sampling_fps{camera}``, ``l2g_ready``
Info
    ``l2g_build_info{version,extractor,worker,extract_device,index_device,stage2_device}`` (devices: ``cpu``,
    ``cuda``, ``cuda:N``; see :mod:`stream.devices`)
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import generate_latest

__all__ = ["QUERY_STAGES", "StreamMetrics"]

QUERY_STAGES = ("queue", "decode_image", "extract", "stage1", "stage2", "total")
_QUERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
_DECODE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SNAPSHOT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class StreamMetrics:
    """The metrics of one worker.

    Args:
        registry: where to register; a fresh private registry when None.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        # ingest
        self.frames_decoded = Counter("l2g_frames_decoded", "Video frames decoded.", ["camera"], registry=r)
        self.frames_sampled = Counter("l2g_frames_sampled", "Decoded frames kept by the sampler.", ["camera"],
                                      registry=r)
        self.frames_skipped = Counter(
            "l2g_frames_skipped",
            "Decoded frames not indexed, by reason (sampling, load_shed, duplicate, too_old, corrupt).",
            ["camera", "reason"], registry=r)
        self.frames_indexed = Counter("l2g_frames_indexed", "Frames newly added to the index.", ["camera"],
                                      registry=r)
        self.chunks_consumed = Counter("l2g_chunks_consumed", "Video chunk messages consumed.",
                                       ["topic", "partition"], registry=r)
        self.decode_chunk_seconds = Histogram("l2g_decode_chunk_seconds",
                                              "Time to decode (and sample) one video chunk.",
                                              buckets=_DECODE_BUCKETS, registry=r)
        self.extractor_batch_seconds = Histogram("l2g_extractor_batch_seconds",
                                                 "Time of one extractor batch.", ["extractor"],
                                                 buckets=_BATCH_BUCKETS, registry=r)
        self.extractor_errors = Counter("l2g_extractor_errors",
                                        "Extractor failures other than rejected input (a bug or a runtime fault).",
                                        ["extractor"], registry=r)
        self.extractor_batch_frames = Histogram("l2g_extractor_batch_frames", "Frames per extractor batch.",
                                                ["extractor"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.sampling_fps = Gauge("l2g_sampling_fps", "Current sampling rate per camera (frames/s).", ["camera"],
                                  registry=r)
        self.consumer_lag = Gauge("l2g_consumer_lag_messages", "Messages between read position and end.",
                                  ["topic", "partition"], registry=r)
        self.consumer_lag_seconds = Gauge(
            "l2g_consumer_lag_seconds", "0 when caught up, else the wall clock minus the Kafka timestamp of the last "
            "message consumed (how long the message being processed waited).", ["topic", "partition"], registry=r)
        self.ingest_freshness = Gauge("l2g_ingest_freshness_seconds",
                                      "Wall-clock time minus the newest indexed frame time.", registry=r)
        self.rebalances = Counter("l2g_rebalances", "Partition assignments received.", registry=r)
        self.commits = Counter("l2g_commits", "Snapshot-and-commit cycles completed.", registry=r)
        self.snapshot_failures = Counter("l2g_snapshot_failures", "Partition snapshots that failed (retried later).",
                                         registry=r)
        self.snapshot_seconds = Histogram("l2g_snapshot_seconds", "Time to write one index snapshot.",
                                          buckets=_SNAPSHOT_BUCKETS, registry=r)
        # index
        self.index_frames = Gauge("l2g_index_frames", "Frames in the index.", registry=r)
        self.index_features = Gauge("l2g_index_features", "Local features in the index.", registry=r)
        self.index_bytes = Gauge("l2g_index_bytes", "Approximate memory of the index.", registry=r)
        self.index_time_span = Gauge("l2g_index_time_span_seconds", "Newest minus oldest indexed frame time.",
                                     registry=r)
        self.index_newest = Gauge("l2g_index_newest_timestamp_seconds", "Unix time of the newest indexed frame.",
                                  registry=r)
        self.index_oldest = Gauge("l2g_index_oldest_timestamp_seconds", "Unix time of the oldest indexed frame.",
                                  registry=r)
        self.index_evicted = Counter("l2g_index_evicted_frames", "Frames dropped by retention.", registry=r)
        # queries
        self.queries = Counter("l2g_queries", "Queries answered, by mode and outcome (ok, partial, error).",
                               ["mode", "outcome"], registry=r)
        self.query_latency = Histogram("l2g_query_latency_seconds", "Query latency per stage.", ["stage"],
                                       buckets=_QUERY_BUCKETS, registry=r)
        self.queries_shed = Counter("l2g_queries_shed", "Queries this worker did not search because their deadline "
                                    "could not be met (the answer says so).", registry=r)
        self.query_end_to_end = Histogram("l2g_query_end_to_end_seconds",
                                          "From the query's sent_at to its result being published.",
                                          buckets=_QUERY_BUCKETS, registry=r)
        # errors and state
        self.dead_letters = Counter("l2g_dead_letters", "Messages sent to the dead-letter topic.",
                                    ["stage", "reason"], registry=r)
        self.ready = Gauge("l2g_ready", "1 when the worker is ready to ingest and answer.", registry=r)
        self.build_info = Info("l2g_build", "Version, configuration and devices of the worker.", registry=r)

    def observe_index(self, frames: int, features: int, nbytes: int, oldest: float | None,
                      newest: float | None) -> None:
        """Refresh the index gauges from ``RollingIndex.stats()`` values."""
        self.index_frames.set(frames)
        self.index_features.set(features)
        self.index_bytes.set(nbytes)
        self.index_time_span.set(0.0 if oldest is None or newest is None else newest - oldest)
        if newest is not None:
            self.index_newest.set(newest)
            self.ingest_freshness.set(max(0.0, time.time() - newest))
        if oldest is not None:
            self.index_oldest.set(oldest)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of one sample (0.0 when absent); for tests, the demo and progress lines.

        Args:
            name: the sample name as exposed, e.g. ``l2g_frames_indexed_total``.
            labels: label values that must all match; samples matching are summed.
        """
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += float(sample.value)
        return total
