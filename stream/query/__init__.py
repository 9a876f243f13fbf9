"""Query answering, scaled out over the partition-sharded index.

The index is sharded by video partition: each frame lives in the index of the worker that owns its partition (see
:mod:`stream.store`). A query is answered in two hops::

    queries topic ──► every worker's QueryLoop (assign_all, from the end, no group)
                        decode image, extract, stage 1 over ITS partitions
                        └─► CandidatePartial(s), keyed by query id ──► candidates topic
    candidates topic ──► MergeLoop (consumer GROUP: exactly one worker owns each query id's partition)
                        collect partials until every video partition is covered or the deadline nears,
                        merge_candidates + stage2 once        ──► QueryResult ──► results topic

* **Exactness.** The search is ``l2g_core``'s two-stage protocol (:class:`~l2g_core.SearchPlan`,
  :func:`~l2g_core.stage1` per partition index, :func:`~l2g_core.merge_candidates`, :func:`~l2g_core.stage2`)
  run on several workers. A partial carries, per video partition, what the plan's ``transport`` says stage 2 can
  use, as raw float32/float16 bytes, plus the query features stage 2 needs (:mod:`stream.query.wire`). The merged
  answer is therefore identical to one process searching every partition (:func:`l2g_core.search`).
* **Coverage.** The merger knows the video topic's partitions; it answers as soon as each has a complete partial
  (a partition covered by two workers during a rebalance is taken once), else at ``deadline -
  deadline_margin_s`` with what arrived, saying which partitions are missing (``status="partial"``).
* **Size.** Partials larger than ``kafka.max_message_bytes`` are split into several messages (slices of a
  partition's list carry ``start``/``total``; the merger reassembles them).
* **Bad partials.** A partial that contradicts its query (mode, k, dimensions) or its own arrays is
  dead-lettered (stage ``merge``) and the rest of the query goes on; no message stops the merge loop.
* **Bad queries.** Every worker finds the same problem (schema, image, reference); each sends an error partial and
  the merger alone dead-letters the query and answers with ``status="error"``, so the asker is never left waiting
  and the dead letter is written once.
* **Delivery.** The merge group commits, per candidates partition, the offset before the oldest query still being
  merged: a merger that dies is replaced and the replacement re-reads the partials of unanswered queries. Partials
  whose deadline passed long ago (a replay) are skipped.

Modules: :mod:`~stream.query.wire` (the partial's byte layout), :mod:`~stream.query.loop` (stage 1 on every
worker), :mod:`~stream.query.pending` (one query being merged), :mod:`~stream.query.merge` (the merge loop).
"""

from stream.query.loop import QueryLoop
from stream.query.merge import MergeLoop

__all__ = ["MergeLoop", "QueryLoop"]
