"""Shared helpers of the stream tests: in-memory workers, queries, results."""

from __future__ import annotations

import time
import uuid
import zlib
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from stream.envelope import decode_message, encode_message
from stream.messages import DeadLetter, Query, QueryResult
from stream.settings import Settings
from stream.testing import MemoryBroker, MemoryConnector
from stream.worker import Worker


def png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    return bytes(buf)


def cameras_on_partitions(n: int, partitions: int = 3, prefix: str = "cam") -> list[str]:
    """``n`` camera names whose keys hash to every partition in turn (MemoryBroker partitioning)."""
    names: list[str] = []
    i = 0
    while len(names) < n:
        name = f"{prefix}-{i}"
        if zlib.crc32(name.encode()) % partitions == len(names) % partitions:
            names.append(name)
        i += 1
    return names


def workers(settings: Settings, broker: MemoryBroker, n: int, prefix: str = "w",
            **overrides: dict) -> list[Worker]:  # type: ignore[type-arg]
    out = []
    for i in range(n):
        s = settings.with_overrides(runtime={"worker_id": f"{prefix}{i}"}, **overrides)
        out.append(Worker(s, connector=MemoryConnector(broker)).open())
    return out


def run_until(ws: Sequence[Worker], done: Callable[[], bool], max_steps: int = 500) -> None:
    for _ in range(max_steps):
        for w in ws:
            w.step()
        if done():
            return
    raise AssertionError("condition not reached")


def ingested(broker: MemoryBroker, ws: Sequence[Worker], frames: int) -> Callable[[], bool]:
    def check() -> bool:
        return sum(len(w.index) for w in ws if w.index is not None) >= frames
    return check


def send_query(broker: MemoryBroker, image: bytes | None = None, **fields: object) -> str:
    qid = str(fields.pop("query_id", uuid.uuid4().hex[:8]))
    q = Query(query_id=qid, image=image, sent_at=time.time(), **fields)  # type: ignore[arg-type]
    out = encode_message(q, source="test")
    broker.append("l2g.queries", out.key, out.value, out.headers)
    return qid


def results(broker: MemoryBroker) -> dict[str, list[QueryResult]]:
    out: dict[str, list[QueryResult]] = {}
    for r in broker.records("l2g.results"):
        res = decode_message(r.value, r.headers, QueryResult)
        out.setdefault(res.query_id, []).append(res)
    return out


def dead_letters(broker: MemoryBroker) -> list[DeadLetter]:
    return [decode_message(r.value, r.headers, DeadLetter) for r in broker.records("l2g.dead-letters")]


def answered(broker: MemoryBroker, *qids: str) -> Callable[[], bool]:
    def check() -> bool:
        res = results(broker)
        return all(q in res for q in qids)
    return check
