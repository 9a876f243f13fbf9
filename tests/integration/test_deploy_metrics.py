"""A live worker's ``/metrics``, scraped over HTTP the way Prometheus does, serves every series the Grafana
dashboard and the alert rules query, and its probes answer as the chart and compose expect."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream.broker import EmbeddedBroker
from stream.worker import Worker
from tests.test_deploy import live
from tests.test_deploy.support import (
    alert_expressions,
    dashboard_expressions,
    exposition_series,
    service_series,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(240)]

# Series that must carry samples after ingest, a checkpoint and one answered query (the others, such as dead
# letters or skipped frames, only appear once such an event happens, but are declared from the start).
OBSERVED = {
    "l2g_frames_decoded_total", "l2g_frames_sampled_total", "l2g_frames_indexed_total", "l2g_chunks_consumed_total",
    "l2g_decode_chunk_seconds_bucket", "l2g_extractor_batch_seconds_bucket", "l2g_extractor_batch_seconds_count",
    "l2g_snapshot_seconds_bucket", "l2g_commits_total", "l2g_rebalances_total", "l2g_sampling_fps",
    "l2g_consumer_lag_messages", "l2g_index_frames", "l2g_index_features", "l2g_index_bytes",
    "l2g_index_time_span_seconds", "l2g_index_newest_timestamp_seconds", "l2g_queries_total",
    "l2g_query_latency_seconds_bucket", "l2g_ready", "l2g_build_info",
}


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    yield from live.embedded_broker()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def test_scraped_metrics_cover_dashboard_and_alerts(broker: EmbeddedBroker, tmp_path: Path) -> None:
    settings = live.make_settings(broker.bootstrap, "metrics", "m0", tmp_path / "snapshots",
                                  http={"enabled": True, "host": "127.0.0.1", "port": 0})
    client = live.Client(broker.bootstrap)
    worker: Worker | None = None
    try:
        client.create_topics(settings)
        cameras = live.cameras_on_partitions(2)
        total = client.publish_cameras("metrics.video", cameras)
        worker = Worker(settings).start()
        assert worker.http_url is not None
        live.wait_for(lambda: worker is not None and worker.ready, 60, "the worker to be ready", [worker])
        live.wait_for(lambda: live.indexed_frames([worker]) == total, 60, "ingest", [worker])
        qid = client.send_query("metrics.queries", live.png(live.camera_frame(1, 10)[live.CROP]), k=3)
        assert client.result("metrics.results", qid).status == "complete"
        live.wait_for(lambda: worker is not None and worker.metrics.value("l2g_commits_total") >= 1, 30,
                      "a snapshot-and-commit cycle", [worker])

        status, body = _get(worker.http_url + "/metrics")
        assert status == 200
        families = list(text_string_to_metric_families(body.decode("utf-8")))
        declared = exposition_series(families)
        sampled = {sample.name for family in families for sample in family.samples}

        wanted = service_series(dashboard_expressions())
        assert len(wanted) > 15
        assert not wanted - declared, f"the dashboard queries series a worker does not serve: {wanted - declared}"
        alerts = service_series(alert_expressions())
        assert not alerts - declared, f"alerts query series a worker does not serve: {alerts - declared}"
        assert not OBSERVED - sampled, f"no samples yet for {OBSERVED - sampled}"

        # Template variables: label_values(l2g_ready, instance) and label_values(l2g_frames_decoded_total, camera).
        seen = {s.labels["camera"] for f in families for s in f.samples if s.name == "l2g_frames_decoded_total"}
        assert seen == set(cameras)
        ready = [s.value for f in families for s in f.samples if s.name == "l2g_ready"]
        assert ready == [1.0]
        info = next(s.labels for f in families for s in f.samples if s.name == "l2g_build_info")
        assert info["worker"] == "m0" and info["extractor"] == "toy"

        # Probes of the chart (liveness /healthz, readiness /readyz) and the compose/Docker healthcheck.
        status, body = _get(worker.http_url + "/healthz")
        assert status == 200 and json.loads(body)["alive"] is True
        status, body = _get(worker.http_url + "/readyz")
        assert status == 200 and json.loads(body)["ready"] is True
        assert _get(worker.http_url + "/nope")[0] == 404
    finally:
        if worker is not None:
            worker.stop(30.0)
        client.close()
