"""Schema-valid but inconsistent messages through every consumer of a worker: none may stop it.

``test_fuzz_messages`` covers bytes that do not decode; here every message decodes, and its fields contradict each
other or the worker (dimensions, counts, modes, times, keys, payloads). Each consumer (ingest, query, merge) must
dead-letter, answer or skip them, and the worker must still answer a real query afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.envelope import encode_message
from stream.messages import CandidatePartial, CandidateSection, Query, QueryFeatures, VideoChunk
from stream.testing import MemoryBroker
from stream.worker import Worker

from ..test_stream.conftest import START, camera_chunks, camera_frame, make_settings, publish
from ..test_stream.helpers import answered, ingested, png, results, run_until, send_query, workers

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
MODES = st.sampled_from(["global", "global_to_local", "local", "l2g"])
STAGES = st.sampled_from(["local", "global"])
DIMS = st.sampled_from([0, 1, 16, 64, 65])


def _floats(n: int, dtype: str = "<f4") -> bytes:
    return np.linspace(-1.0, 1.0, max(n, 0), dtype=np.float32).astype(dtype).tobytes()


@st.composite
def sections(draw: st.DrawFn) -> CandidateSection:
    n = draw(st.integers(0, 4))
    counts = draw(st.lists(st.integers(0, 5), min_size=n, max_size=n))
    g, d = draw(DIMS), draw(DIMS)
    start = draw(st.integers(0, 3))
    return CandidateSection(
        partition=draw(st.integers(0, 5)), start=start, total=start + n + draw(st.integers(0, 2)),
        cameras=[draw(st.sampled_from(["cam-1", "x"])) for _ in range(n)],
        timestamps=[draw(st.floats(0, 4e9)) for _ in range(n)],
        sequences=[draw(st.integers(0, 10**6)) for _ in range(n)],
        scores=_floats(n), global_descriptors=_floats(n * g), descriptor_counts=counts,
        descriptors=_floats(sum(counts) * d, "<f2"), keypoints=_floats(2 * sum(counts)) if draw(st.booleans()) else b"",
    )


@st.composite
def partials(draw: st.DrawFn) -> CandidatePartial:
    count = draw(st.integers(0, 6))
    feats = None
    if draw(st.booleans()):
        feats = QueryFeatures(count=count, descriptors=_floats(count * draw(DIMS)), keypoints=_floats(2 * count),
                              global_descriptor=_floats(draw(st.sampled_from([1, 16, 64]))))
    return CandidatePartial(
        query_id=draw(st.sampled_from(["q-a", "q-b"])), worker_id="fuzz",
        answer_id=draw(st.sampled_from(["1", "2"])),
        mode=draw(MODES), k=draw(st.integers(1, 20_000)), stage=draw(STAGES), local_dim=draw(DIMS),
        global_dim=draw(DIMS), partitions=[0], sections=draw(st.lists(sections(), max_size=3)),
        skipped_partitions=draw(st.lists(st.integers(0, 5), max_size=3)),
        deadline=time.time() + draw(st.floats(-100, 1e6)), received_at=time.time(), query_features=feats,
        query_position=draw(st.sampled_from(["", "t/0/1"])),
    )


@st.composite
def queries(draw: st.DrawFn) -> Query:
    lo, hi = sorted((draw(st.floats(-1e10, 1e10)), draw(st.floats(-1e10, 1e10))))
    return Query(
        query_id=draw(st.text(min_size=1, max_size=8)), image=draw(st.sampled_from([IMAGE, b"\x89PNG....", TINY])),
        k=draw(st.integers(1, 1000)), mode=draw(st.one_of(st.none(), MODES)),
        cameras=draw(st.one_of(st.none(), st.lists(st.sampled_from(["cam-1", "", "nope"]), max_size=3))),
        time_from=draw(st.one_of(st.none(), st.just(lo))), time_to=draw(st.one_of(st.none(), st.just(hi))),
        deadline=draw(st.one_of(st.none(), st.floats(0, 1e11))),
        sent_at=draw(st.one_of(st.none(), st.floats(0, 1e11))),
    )


@st.composite
def chunks(draw: st.DrawFn) -> tuple[bytes | None, VideoChunk]:
    real = camera_chunks("cam-1", 1)[0][0]
    chunk = VideoChunk(
        camera_id=draw(st.sampled_from(["cam-1", "cam-2"])), sequence=draw(st.integers(0, 10**9)),
        first_frame=draw(st.integers(0, 10**12)), start_time=draw(st.floats(-1e9, 2e9)),
        fps=draw(st.floats(0.001, 1000.0)), container=draw(st.sampled_from(["mpegts", "mp4"])),
        frame_count=draw(st.one_of(st.none(), st.integers(0, 10**6))),
        data=draw(st.sampled_from([real.data, real.data[: len(real.data) // 3], b"\x47" * 376])),
    )
    key = draw(st.sampled_from([chunk.camera_id.encode(), b"other", None]))
    return key, chunk


IMAGE = png(camera_frame(1, 10)[32:160, 64:256])
TINY = png(camera_frame(1, 10)[:4, :4])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[MemoryBroker, Worker]:
    broker = MemoryBroker(3)
    publish(broker, "l2g.video", camera_chunks("cam-1", 1))
    (worker,) = workers(make_settings(tmp_path_factory.mktemp("fuzz")), broker, 1)
    run_until([worker], ingested(broker, [worker], 8))
    return broker, worker


def _still_answers(broker: MemoryBroker, worker: Worker) -> None:
    qid = send_query(broker, IMAGE, k=50, mode="local", deadline=time.time() + 30)
    run_until([worker], answered(broker, qid), max_steps=2_000)
    (res,) = results(broker)[qid]
    assert res.status in ("complete", "partial") and res.matches[0].camera_id == "cam-1"
    # the fuzzed chunks re-used the real video at other times and frame numbers; the crop's own frame is still there
    assert any((m.frame, m.timestamp) == (10, pytest.approx(START + 1.0)) for m in res.matches)


@FUZZ
@given(batch=st.lists(partials(), min_size=1, max_size=4))
def test_merge_loop_survives_inconsistent_partials(fleet: tuple[MemoryBroker, Worker],
                                                   batch: list[CandidatePartial]) -> None:
    broker, worker = fleet
    assert worker.merge is not None
    for partial in batch:
        out = encode_message(partial, source="fuzz")
        broker.append("l2g.candidates", out.key, out.value, out.headers)
    for _ in range(3):
        worker.merge.run_once()
    worker.merge.pending.clear()  # forged queries would otherwise wait for their (fuzzed) deadlines


@FUZZ
@given(query=queries())
def test_query_loop_survives_odd_queries(fleet: tuple[MemoryBroker, Worker], query: Query) -> None:
    broker, worker = fleet
    assert worker.query is not None
    out = encode_message(query, source="fuzz")
    broker.append("l2g.queries", out.key, out.value, out.headers)
    for _ in range(3):
        worker.query.run_once()
        worker.merge.run_once()  # type: ignore[union-attr]


@FUZZ
@given(item=chunks())
def test_ingest_loop_survives_inconsistent_chunks(fleet: tuple[MemoryBroker, Worker],
                                                  item: tuple[bytes | None, VideoChunk]) -> None:
    broker, worker = fleet
    assert worker.ingest is not None
    key, chunk = item
    out = encode_message(chunk, source="fuzz")
    broker.append("l2g.video", key, out.value, out.headers)
    for _ in range(3):
        worker.ingest.run_once()


def test_the_fuzzed_worker_still_answers(fleet: tuple[MemoryBroker, Worker], tmp_path: Path) -> None:
    """Runs after the fuzzers (same module, same worker): the worker is still whole."""
    broker, worker = fleet
    _still_answers(broker, worker)
    assert not worker.stopping
    worker.stop()
