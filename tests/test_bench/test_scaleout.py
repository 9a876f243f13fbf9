"""``bench.bench_scaleout`` end to end on a tiny index: worker processes load the partition snapshots it writes,
split the partitions between them, and answer every query from every partition."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(600)]


def test_worker_processes_answer_from_every_partition_and_the_model_is_reported() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_scaleout", "--extractor", "toy", "--partitions", "3", "--frames", "120",
         "--features", "32", "--workers", "1", "2", "--queries", "3"],
        capture_output=True, text=True, timeout=540, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["workers"] for r in rows] == [1, 2]
    for row in rows:
        assert row["bench"] == "scaleout" and row["partitions"] == 3 and row["queries"] == 3
        assert row["incomplete"] == 0  # every answer came from all 3 partitions
        assert len(row["worker_rss_mb"]) == row["workers"]  # one process per worker, each measured
        assert all(mb > 0 for mb in row["worker_rss_mb"].values())
        assert row["threads_per_worker"] >= 1
        assert row["end_to_end_p50_ms"] >= row["total_p50_ms"] > 0  # the client waits for the whole answer
        assert row["predicted_p50_ms"] >= row["predicted_stage1_p50_ms"] > 0
        assert row["overhead_p50_ms"] == pytest.approx(row["end_to_end_p50_ms"] - row["predicted_p50_ms"], abs=0.2)
    assert "3 partition snapshots of 120 frames" in proc.stderr
