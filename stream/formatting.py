"""Human-readable output of query results and times, shared by ``l2g-stream query`` (:mod:`stream.cli`) and the demo
(:mod:`stream.demo`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream.messages import QueryResult

__all__ = ["format_result", "format_time"]


def format_time(t: float) -> str:
    """``2026-11-22 10:00:01.500 UTC``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def format_result(result: QueryResult, *, expected: tuple[str, int] | None = None) -> str:
    """The matches as a table, then latencies and coverage."""
    lines = []
    if result.status == "error":
        return f"query {result.query_id}: ERROR {result.error}"
    stages = sorted({s for m in result.matches for s in m.stage_scores})
    head = f"{'#':>2}  {'camera':<28} {'frame':>6}  {'time':<27} {'score':>8}  " + "  ".join(f"{s:>8}" for s in stages)
    lines.append(head)
    lines.append("-" * len(head))
    for i, m in enumerate(result.matches, 1):
        mark = "  <- expected" if expected is not None and (m.camera_id, m.frame) == expected else ""
        lines.append(f"{i:>2}  {m.camera_id[:28]:<28} {m.frame:>6}  {format_time(m.timestamp):<27} {m.score:>8.4f}  "
                     + "  ".join(f"{m.stage_scores.get(s, float('nan')):>8.4f}" for s in stages) + mark)
    c = result.coverage
    if not result.matches:
        lines.append("(no match: nothing indexed matches the query's cameras and time range)" if c.frames_total == 0
                     else "(no match)")
    order = ["queue", "decode_image", "extract", "stage1", "stage2", "total"]
    lat = result.latency_ms
    lines.append("latency ms: " + "  ".join(f"{s}={lat[s]:.1f}" for s in order if s in lat))
    if "merge_wait" in lat:
        lines.append(f"  merge_wait={lat['merge_wait']:.1f}: reading the query to the last partial (includes "
                     "decode_image, extract and stage1 of the slowest worker)")
    span = f", index spans {format_time(c.indexed_from)} .. {format_time(c.indexed_to)}" \
        if c.indexed_from is not None and c.indexed_to is not None else ""
    lines.append(f"coverage: {c.frames_searched}/{c.frames_total} frames, {c.shards_searched}/{c.shards_total} shards, "
                 f"{c.partitions_searched}/{c.partitions_total} partitions, "
                 f"{'complete' if c.complete else 'INCOMPLETE'}{span}")
    lines += [f"  note: {n}" for n in c.notes]
    lines.insert(0, f"query {result.query_id}: {result.status}, mode {result.mode}, answered by {result.worker_id}")
    return "\n".join(lines)
