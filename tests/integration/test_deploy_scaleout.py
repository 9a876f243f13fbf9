"""Scale-out as deployed, against the real embedded broker (tansu): two workers in one consumer group answer
exactly like one worker over the same frames, and when one stops the other takes over its partitions from the
shared snapshots and still answers exactly.

Two deployments share the broker, each with its own topics and groups: ``fleet`` (2 workers, one shared snapshot
directory, like the compose volume or the chart's RWX PVC) and ``solo`` (1 worker). Both ingest the same clips of
several cameras spread over the 3 partitions of their video topic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker
from stream.envelope import decode_message
from stream.kafka import KafkaSource
from stream.kafka.admin import committed_offsets
from stream.messages import CandidatePartial
from stream.worker import Worker
from tests.test_deploy import live

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(360)]

ALL = set(range(live.PARTITIONS))


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    yield from live.embedded_broker()


def _queries() -> list[tuple[bytes, str, int]]:
    """(image, mode, k): a crop of camera seed 2 frame 10, a wide crop of camera seed 4 frame 25."""
    crop = live.png(live.camera_frame(2, 10)[live.CROP])
    wide = live.png(live.camera_frame(4, 25)[16:176, 0:320])
    return [(crop, "l2g", 6), (wide, "global_to_local", 6), (crop, "local", 4)]


def _ask_both(client: live.Client, tag: str) -> list[tuple[str, str]]:
    """Send every query to both deployments under the same ids; returns (query id, mode)."""
    sent = []
    for i, (image, mode, k) in enumerate(_queries()):
        qid = f"{tag}-{i}"
        for prefix in ("fleet", "solo"):
            client.send_query(f"{prefix}.queries", image, k=k, mode=mode, query_id=qid)
        sent.append((qid, mode))
    return sent


def _check_same_answers(client: live.Client, sent: list[tuple[str, str]], cameras: list[str]) -> list[str]:
    """Fleet and solo results are identical and complete; returns the fleet's answering worker per query."""
    mergers = []
    for qid, mode in sent:
        fleet = client.result("fleet.results", qid)
        solo = client.result("solo.results", qid)
        assert fleet.status == solo.status == "complete", (qid, fleet.coverage, solo.coverage)
        assert fleet.mode == solo.mode == mode
        assert fleet.coverage.partitions_searched == fleet.coverage.partitions_total == live.PARTITIONS
        assert fleet.coverage.frames_searched == solo.coverage.frames_searched
        assert fleet.matches, qid
        assert live.matches(fleet) == live.matches(solo), f"{qid} ({mode}): the fleet differs from one worker"
        mergers.append(fleet.worker_id)
    top = client.result("fleet.results", sent[0][0]).matches[0]
    assert (top.camera_id, top.frame) == (cameras[1], 10), "the crop's own frame ranks first"
    return mergers


def _partials(client: live.Client, topic: str, workers: set[str]) -> list[CandidatePartial]:
    """Every partial on the candidates topic, read until each of ``workers`` has published one."""
    reader = KafkaSource(client.settings.kafka, client_id="test-candidates")
    partials: list[CandidatePartial] = []

    def read() -> bool:
        partials.extend(decode_message(r.value, r.headers, CandidatePartial) for r in reader.poll(0.2, 500))
        return {p.worker_id for p in partials} >= workers

    try:
        assert reader.assign_all(topic, from_end=False)
        live.wait_for(read, 30, f"partials of {sorted(workers)}")
    finally:
        reader.close()
    return partials


def test_two_workers_answer_like_one_and_take_over_on_rebalance(broker: EmbeddedBroker, tmp_path: Path) -> None:
    shared = tmp_path / "shared-snapshots"
    fleet_settings = [live.make_settings(broker.bootstrap, "fleet", f"w{i}", shared) for i in range(2)]
    solo_settings = live.make_settings(broker.bootstrap, "solo", "solo", tmp_path / "solo-snapshots")
    client = live.Client(broker.bootstrap)
    workers: list[Worker] = []
    try:
        client.create_topics(fleet_settings[0])
        client.create_topics(solo_settings)
        cameras = live.cameras_on_partitions(4)
        total = client.publish_cameras("fleet.video", cameras)
        assert client.publish_cameras("solo.video", cameras) == total

        solo = Worker(solo_settings).start()
        w0 = Worker(fleet_settings[0]).start()
        w1 = Worker(fleet_settings[1]).start()
        workers = [solo, w0, w1]
        fleet = [w0, w1]

        # The ingest group splits the video partitions: each frame is indexed by exactly one worker.
        def split() -> bool:
            p0, p1 = live.owned_partitions(w0), live.owned_partitions(w1)
            return bool(p0) and bool(p1) and not p0 & p1 and p0 | p1 == ALL
        live.wait_for(lambda: all(w.ready for w in workers) and split(), 90, "ready workers with split partitions",
                      workers)
        live.wait_for(lambda: live.indexed_frames(fleet) == total and live.indexed_frames([solo]) == total, 120,
                      f"{total} frames indexed by each deployment", workers)
        assert split(), "partitions moved while ingesting"

        # Every worker reads every query and publishes a partial; one merger per query answers exactly like one.
        sent = _ask_both(client, "before")
        _check_same_answers(client, sent, cameras)
        for qid, _ in sent:
            assert len(client.all_results("fleet.results", qid, settle_s=0.5)) == 1, f"{qid} answered twice"
        assert sum(w.metrics.value("l2g_queries_total") for w in fleet) == len(sent)
        partials = _partials(client, "fleet.candidates", {"w0", "w1"})
        by_worker = {w: set().union(*(p.partitions for p in partials if p.worker_id == w)) for w in ("w0", "w1")}
        assert by_worker["w0"] == live.owned_partitions(w0) and by_worker["w1"] == live.owned_partitions(w1)

        # w0 stops (SIGTERM path): it snapshots and commits its partitions and leaves; w1 takes them over by
        # loading their snapshots from the shared directory, not by re-indexing the topic.
        moved = live.owned_partitions(w0)
        indexed_by_w1 = w1.ingest.stats.frames_indexed if w1.ingest is not None else -1
        rebalances = w1.metrics.value("l2g_rebalances_total")
        w0.stop()
        for p in moved:
            assert list(shared.glob(f"*/fleet.video-{p}")), f"no snapshot of partition {p} in {shared}"
        live.wait_for(lambda: live.owned_partitions(w1) == ALL and w1.ready, 60, "w1 owning every partition", [w1])
        live.wait_for(lambda: live.indexed_frames([w1]) == total, 30, "w1 holding every frame", [w1])
        assert w1.ingest is not None and w1.ingest.stats.frames_indexed == indexed_by_w1, \
            "the moved partitions must come from their snapshots, not from re-reading the topic"
        assert w1.metrics.value("l2g_rebalances_total") > rebalances
        assert w1.metrics.value("l2g_index_frames") == total

        sent = _ask_both(client, "after")
        assert set(_check_same_answers(client, sent, cameras)) == {"w1"}
    finally:
        for worker in workers:
            worker.stop(30.0)
        client.close()


def test_a_crashed_worker_is_replaced_from_its_snapshots(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """A worker configured by env vars only (like a container) dies with SIGKILL: no final snapshot, no commit,
    no LeaveGroup. Once the group drops it, the survivor owns every partition, loads the dead worker's periodic
    snapshots from the shared directory, and answers as the two did together."""
    shared = tmp_path / "shared-snapshots"
    survivor_settings = live.make_settings(broker.bootstrap, "crash", "survivor", shared)
    client = live.Client(broker.bootstrap)
    victim: live.WorkerProcess | None = None
    survivor: Worker | None = None
    try:
        client.create_topics(survivor_settings)
        cameras = live.cameras_on_partitions(3)
        total = client.publish_cameras("crash.video", cameras)
        victim = live.WorkerProcess(survivor_settings.with_overrides(runtime={"worker_id": "victim"}),
                                    tmp_path / "victim.log")
        live.wait_for(victim.ready, 90, "the worker process to be ready")
        survivor = Worker(survivor_settings).start()
        w = survivor

        def split() -> bool:
            mine = live.owned_partitions(w)
            return w.ready and bool(mine) and mine != ALL
        live.wait_for(split, 60, "the partitions to be split between the two workers", [w])
        live.wait_for(lambda: live.indexed_frames([w]) + victim.metric("l2g_index_frames") == total, 90,
                      "ingest by both workers", [w])
        assert split()
        # Every frame is covered by a periodic snapshot once the group's committed offsets reach the end of every
        # partition (offsets are committed only after the snapshot that covers them).
        ends = {p: o for p, o in client.sink.delivered().items() if p.topic == "crash.video"}
        assert len(ends) == live.PARTITIONS
        live.wait_for(lambda: committed_offsets(survivor_settings, "crash-ingest", "crash.video") == ends, 30,
                      "checkpoints covering every chunk", [w])

        image = live.png(live.camera_frame(2, 10)[live.CROP])
        before = client.result("crash.results", client.send_query("crash.queries", image, k=6, mode="l2g"))
        assert before.status == "complete" and before.coverage.partitions_searched == live.PARTITIONS

        indexed = w.ingest.stats.frames_indexed if w.ingest is not None else -1
        victim.kill()
        # Tansu drops a member that vanished after about max_poll_interval_ms (8 s here).
        live.wait_for(lambda: live.owned_partitions(w) == ALL and w.ready, 90, "the survivor to own every partition",
                      [w])
        live.wait_for(lambda: live.indexed_frames([w]) == total, 30, "every frame on the survivor", [w])
        assert w.ingest is not None and w.ingest.stats.frames_indexed == indexed, \
            "the dead worker's partitions must come from its snapshots, not from re-reading the topic"

        after = client.result("crash.results", client.send_query("crash.queries", image, k=6, mode="l2g"),
                              timeout_s=90)
        assert after.status == "complete", after.coverage
        assert after.worker_id == "survivor"
        assert live.matches(after) == live.matches(before)
    except AssertionError:
        if victim is not None:
            print(victim.log())
        raise
    finally:
        if survivor is not None:
            survivor.stop(30.0)
        if victim is not None:
            victim.stop()
        client.close()
