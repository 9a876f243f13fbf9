"""The worker's failure policy: what each kind of failure does, decided in one place by this project's types.

The loops (:class:`stream.ports.Loop`: ingest, query, merge) run in :meth:`stream.worker.Worker._run_loop`; an
exception escaping ``run_once`` is handled by :class:`LoopFailurePolicy`:

``stream.errors.BrokerError``
    retry: the loop waits (0.5 s, doubling up to 10 s, back to 0.5 s after a good poll) and polls again; the broker
    is down or restarting and the client reconnects.
anything else (``stream.errors.ExtractorCrashError`` included)
    stop: logged with its traceback; the worker shuts down gracefully (each loop finishes, the ingest loop
    checkpoints what it fully indexed) and stops with ``Worker.error`` set (``l2g-stream worker`` exits 1), so the
    orchestrator restarts it.

Failures handled where they happen (they never reach the loop):

a snapshot write fails (``l2g_core.SnapshotError``; an ``OSError`` is wrapped into it where it happens)
    ``PartitionedIndex.snapshot`` lists it in its ``SnapshotReport``; ``IngestLoop.checkpoint`` commits the
    partitions written, counts each failed one in ``l2g_snapshot_failures_total`` and commits nothing for it: it
    stays dirty and the next checkpoint retries it. The worker keeps ingesting and answering.
bad input (``stream.errors.BadInputError``)
    the message goes to the dead-letter topic with its reason; the loop goes on.
the extractor rejects its input (``plugins.errors.ExtractorInputError``)
    the ingest batch is retried frame by frame; the chunk of each frame still rejected is dead-lettered with reason
    ``extractor_input``; the other frames are indexed.
any other exception from the extractor (a bug, or its runtime failed: CUDA out of memory, ...)
    a crash report (:func:`extractor_crash`): logged with its traceback, counted in
    ``l2g_extractor_errors_total{extractor}``, raised as ``stream.errors.ExtractorCrashError``. One message must not
    stop a worker, and a broken runtime must not throw good video away, so the ingest loop tells them apart: the
    batch is retried frame by frame, and when the extractor still handles a canary frame (seeded noise of the same
    size), the chunks whose frames crash it are dead-lettered with reason ``extractor_crash`` (a reason of its own,
    not bad input: the video is kept for a replay once the bug is fixed) and the loop goes on. When every frame and
    the canary crash, the runtime is broken: nothing is dead-lettered, the error stops the worker (above) with no
    offset committed past the batch, and the orchestrator's restart reads it again. The query loop answers a query
    whose image crashes the extractor with an error result and an ``extractor_crash`` dead letter holding the query.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from stream.errors import BrokerError, ExtractorCrashError
from stream.metrics import StreamMetrics

__all__ = ["LoopFailurePolicy", "extractor_crash"]

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopFailurePolicy:
    """What a loop does with an exception escaping ``run_once`` (see the module docstring).

    Attributes:
        retry_on: exception types after which the loop backs off and polls again; anything else stops the worker.
        first_backoff_s: the first wait; it doubles after each retry in a row.
        max_backoff_s: the longest wait.
    """

    retry_on: tuple[type[Exception], ...] = (BrokerError,)
    first_backoff_s: float = 0.5
    max_backoff_s: float = 10.0

    def next_backoff(self, backoff_s: float) -> float:
        """The wait after one more failed retry."""
        return min(backoff_s * 2, self.max_backoff_s)


def extractor_crash(exc: Exception, *, extractor: str, frames: int, metrics: StreamMetrics) -> ExtractorCrashError:
    """The crash report of an extractor failure that is not ``ExtractorInputError``: logs ``exc`` with its traceback,
    counts it in ``l2g_extractor_errors_total{extractor}`` and returns the error to raise (``from exc``)."""
    LOG.error("extractor %s failed on a batch of %d frames (a bug, not bad input: nothing is dead-lettered)",
              extractor, frames, exc_info=exc)
    metrics.extractor_errors.labels(extractor).inc()
    return ExtractorCrashError(f"extractor {extractor} failed on a batch of {frames} frames: "
                               f"{type(exc).__name__}: {exc}", extractor)
