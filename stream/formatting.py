"""Human-readable output of query results and times, shared by ``l2g-stream query`` (:mod:`stream.cli`) and the demo
(:mod:`stream.demo`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream.messages import Match, QueryResult

__all__ = ["format_result", "format_time"]


def format_time(t: float) -> str:
    """``2026-11-22 10:00:01.500 UTC``."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _geometry(m: Match) -> str:
    """The geometric proof in a few words: inliers and the projected box, or why there is none."""
    g = m.geometry
    if g is None:
        return "-"
    if g.status != "verified" or g.box is None:
        return f"none ({g.inliers} inliers)"
    x0, y0, x1, y1 = g.box
    return f"{g.inliers} inl [{x0:.0f},{y0:.0f},{x1:.0f},{y1:.0f}]"


def _segments(result: QueryResult) -> list[str]:
    """The answer's time segments, best first."""
    if not result.segments:
        return []
    lines = ["segments (matches of one camera close in time):"]
    for i, s in enumerate(result.segments, 1):
        best = s.match_indices[0] + 1 if s.match_indices else 0
        lines.append(f"{i:>2}  {s.camera_id[:28]:<28} {format_time(s.start)} .. {format_time(s.end)} "
                     f"({s.end - s.start:.1f} s)  {s.frame_count} match{'es' if s.frame_count != 1 else ''}, "
                     f"best #{best} frame {s.best_frame} score {s.score:.4f}")
    return lines


def _stage_cell(score: float | None) -> str:
    """One stage score, or a dash where the stage did not score the match (e.g. an L2G match below the re-ranked
    head has no L2G score)."""
    return f"{'-':>8}" if score is None else f"{score:>8.4f}"


def format_result(result: QueryResult, *, expected: tuple[str, int] | None = None) -> str:
    """The matches as a table, then latencies and coverage."""
    lines = []
    if result.status == "error":
        return f"query {result.query_id}: ERROR {result.error}"
    stages = sorted({s for m in result.matches for s in m.stage_scores})
    head = (f"{'#':>2}  {'camera':<28} {'frame':>6}  {'time':<27} {'score':>8}  "
            + "  ".join(f"{s:>8}" for s in stages) + f"  {'geometry':<22}")
    lines.append(head)
    lines.append("-" * len(head))
    for i, m in enumerate(result.matches, 1):
        mark = "  <- expected" if expected is not None and (m.camera_id, m.frame) == expected else ""
        lines.append(f"{i:>2}  {m.camera_id[:28]:<28} {m.frame:>6}  {format_time(m.timestamp):<27} {m.score:>8.4f}  "
                     + "  ".join(_stage_cell(m.stage_scores.get(s)) for s in stages)
                     + f"  {_geometry(m):<22}" + mark)
    c = result.coverage
    if not result.matches:
        lines.append("(no match: nothing indexed matches the query's cameras and time range)" if c.frames_total == 0
                     else "(no match)")
    lines += _segments(result)
    order = ["queue", "decode_image", "extract", "stage1", "stage2", "verify", "total"]
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
