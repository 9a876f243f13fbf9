"""What the page shows of a query and its answer, as plain JSON (the page's script only lays it out).

Times are given both as Unix seconds and as text in UTC (:func:`stream.formatting.format_time`); latency stages
come in pipeline order; every match says where its frame image is served when the answer tells where the frame
lives in Kafka (``frame_ref``), and carries its geometric proof (outline polygon in frame pixels) when there is one.
Fields a worker did not fill (segments, frame references, geometry) are empty or null, and the page says so.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from stream.formatting import format_time

if TYPE_CHECKING:
    from stream.messages import Match, QueryResult
    from stream.ui.sessions import UiQuery

__all__ = ["LATENCY_ORDER", "query_view"]

LATENCY_ORDER = ("queue", "decode_image", "extract", "stage1", "merge_wait", "stage2", "verify", "total")


def _latency(latency_ms: dict[str, float]) -> list[dict[str, Any]]:
    stages = [s for s in LATENCY_ORDER if s in latency_ms] + sorted(set(latency_ms) - set(LATENCY_ORDER))
    return [{"stage": s, "ms": round(latency_ms[s], 2)} for s in stages]


def _geometry(match: Match) -> dict[str, Any] | None:
    if match.geometry is None:
        return None
    data: dict[str, Any] = match.geometry.model_dump(mode="json", exclude={"version", "transform"})
    return data


def _match(base: str, index: int, match: Match) -> dict[str, Any]:
    return {
        "rank": index + 1,
        "camera_id": match.camera_id,
        "frame": match.frame,
        "timestamp": match.timestamp,
        "time": format_time(match.timestamp),
        "score": match.score,
        "stage_scores": match.stage_scores,
        "geometry": _geometry(match),
        "frame_url": f"{base}/frames/{index}" if match.frame_ref is not None else None,
    }


def _segments(result: QueryResult) -> list[dict[str, Any]]:
    out = []
    for seg in result.segments:
        out.append({"camera_id": seg.camera_id, "start": seg.start, "end": seg.end,
                    "start_time": format_time(seg.start), "end_time": format_time(seg.end),
                    "best_frame": seg.best_frame, "best_time": format_time(seg.best_timestamp),
                    "score": seg.score, "frame_count": seg.frame_count,
                    "match_ranks": [i + 1 for i in seg.match_indices]})
    return out


def _answer(base: str, result: QueryResult, submitted_at: float) -> dict[str, Any]:
    coverage = dataclasses.asdict(result.coverage)
    coverage["notes"] = list(coverage["notes"])
    for name in ("indexed_from", "indexed_to"):
        value = coverage.get(name)
        coverage[f"{name}_time"] = format_time(value) if isinstance(value, int | float) else None
    return {
        "status": result.status,
        "mode": result.mode,
        "worker_id": result.worker_id,
        "error": result.error,
        "answered_at": format_time(result.answered_at),
        "round_trip_ms": round(max(0.0, result.answered_at - submitted_at) * 1000.0, 1),
        "latency": _latency(result.latency_ms),
        "coverage": coverage,
        "matches": [_match(base, i, m) for i, m in enumerate(result.matches)],
        "segments": _segments(result),
    }


def query_view(query: UiQuery, *, now: float | None = None) -> dict[str, Any]:
    """The page's view of ``query``: ``state`` is ``waiting``, ``answered`` or ``timed_out``."""
    now = time.time() if now is None else now
    base = f"/api/queries/{query.query_id}"
    p = query.params
    view: dict[str, Any] = {
        "query_id": query.query_id,
        "submitted_at": format_time(query.submitted_at),
        "elapsed_ms": round(max(0.0, now - query.submitted_at) * 1000.0, 1),
        "image_url": f"{base}/image",
        "asked": {"k": p.k, "mode": p.mode, "cameras": p.cameras, "timeout_s": p.timeout_s,
                  "time_from": format_time(p.time_from) if p.time_from is not None else None,
                  "time_to": format_time(p.time_to) if p.time_to is not None else None},
    }
    if query.result is not None:
        view["state"] = "answered"
        view["answer"] = _answer(base, query.result, query.submitted_at)
    else:
        view["state"] = "timed_out" if now > query.answer_due else "waiting"
    return view
