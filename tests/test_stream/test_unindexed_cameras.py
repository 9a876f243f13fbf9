"""A query naming a camera that no worker has indexed says so by name, instead of looking like "no match"."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.envelope import decode_message
from stream.formatting import format_result
from stream.messages import CandidatePartial
from stream.testing import MemoryBroker

from .conftest import camera_chunks, camera_frame, make_settings, publish
from .helpers import answered, cameras_on_partitions, ingested, png, results, run_until, send_query, workers

pytestmark = pytest.mark.timeout(120)

CROP = (slice(32, 160), slice(64, 256))
NEVER = "never been indexed by any worker answering"


def test_cameras_never_indexed_are_named_in_the_result(tmp_path: Path) -> None:
    broker = MemoryBroker(3)
    cams = cameras_on_partitions(2)
    for seed, cam in enumerate(cams, start=1):
        publish(broker, "l2g.video", camera_chunks(cam, seed))
    ws = workers(make_settings(tmp_path), broker, 2)  # the partitions are split between them
    run_until(ws, ingested(broker, ws, 16))
    image = png(camera_frame(1, 10)[CROP])
    only_typo = send_query(broker, image, k=3, cameras=["front-dor"])
    mixed = send_query(broker, image, k=3, cameras=[cams[0], "front-dor", "back-yard"])
    known = send_query(broker, image, k=3, cameras=cams)
    unfiltered = send_query(broker, image, k=3)
    run_until(ws, answered(broker, only_typo, mixed, known, unfiltered))
    r = {qid: results(broker)[qid][0] for qid in (only_typo, mixed, known, unfiltered)}

    assert f"camera 'front-dor' has {NEVER} (a typo, or no video published for it yet)" in r[only_typo].coverage.notes
    assert r[only_typo].matches == []
    assert f"cameras 'back-yard', 'front-dor' have {NEVER} (typos, or no video published for them yet)" \
        in r[mixed].coverage.notes
    assert r[mixed].matches and {m.camera_id for m in r[mixed].matches} == {cams[0]}
    for qid in (known, unfiltered):
        assert not any(NEVER in n for n in r[qid].coverage.notes)
    assert f"camera 'front-dor' has {NEVER}" in format_result(r[only_typo])
    # each worker reports the cameras missing from its own partitions; only those missing from all are named
    partials = [decode_message(rec.value, rec.headers, CandidatePartial) for rec in broker.records("l2g.candidates")]
    mine = {p.worker_id: set(p.unindexed_cameras) for p in partials if p.query_id == known}
    assert len(mine) == 2 and all(m <= set(cams) for m in mine.values()) and not set.intersection(*mine.values())
    for w in ws:
        w.stop()
