"""Prometheus config and alert rules: they parse, every metric an alert queries is exported by
``stream.metrics.StreamMetrics``, and promtool accepts both files when it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from stream.settings import QuerySettings
from tests import _harness
from tests.test_deploy.support import (
    ALERTS_FILE,
    ALERTS_TEST_FILE,
    DEPLOY,
    PROMETHEUS_CONFIG,
    TARGET_LABELS,
    exported_series_names,
    is_known_series,
    metric_labels,
    promql_label_names,
    promql_metric_names,
)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    data = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    out = [rule for group in data["groups"] for rule in group["rules"]]
    assert out
    return out


def test_config_shape(config: dict[str, Any]) -> None:
    assert {"global", "scrape_configs", "rule_files"} <= set(config)
    names = [job["job_name"] for job in config["scrape_configs"]]
    assert len(names) == len(set(names)), "duplicate job names"
    assert "l2g-worker" in names
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_CONFIG.parent / rule_file).is_file(), rule_file


def test_rules_shape(rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        assert rule["expr"].strip()
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


RUNBOOK = DEPLOY / "RUNBOOK.md"
WORKER_JOB = "l2g-worker"


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors of the headings: lower case, punctuation dropped, spaces to dashes."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_every_alert_has_a_runbook_section(rules: list[dict[str, Any]]) -> None:
    anchors = _anchors(RUNBOOK.read_text(encoding="utf-8"))
    for rule in rules:
        url = rule["annotations"].get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path == "deploy/RUNBOOK.md", f"{rule['alert']}: runbook_url {url!r} must point into deploy/RUNBOOK.md"
        assert anchor == rule["alert"].lower() and anchor in anchors, f"{rule['alert']}: no section {anchor!r}"


def test_alerts_select_the_worker_job(config: dict[str, Any], rules: list[dict[str, Any]]) -> None:
    """The compose scrape job, the chart's ServiceMonitor job label (test_helm) and the alerts agree."""
    assert WORKER_JOB in [job["job_name"] for job in config["scrape_configs"]]
    jobs = set()
    for rule in rules:
        jobs.update(re.findall(r'job\s*=~?\s*"([^"]*)"', rule["expr"]))
    assert jobs == {WORKER_JOB}


def test_no_alert_on_event_time_freshness(rules: list[dict[str, Any]]) -> None:
    """Historical footage has old event times: no alert may compare the indexed event times with the clock."""
    for rule in rules:
        names = promql_metric_names(rule["expr"])
        assert not names & {"l2g_index_newest_timestamp_seconds", "l2g_ingest_freshness_seconds"}, rule["alert"]


def test_alert_metrics_are_exported(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        names = promql_metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric found in {rule['expr']!r}"
        unknown = sorted(n for n in names if not is_known_series(n))
        assert not unknown, f"{rule['alert']} queries metrics StreamMetrics does not export: {unknown}"


def test_alert_labels_exist(rules: list[dict[str, Any]]) -> None:
    labels = metric_labels()
    for rule in rules:
        names = {n for n in promql_metric_names(rule["expr"]) if n in labels}
        if not names:
            continue
        known = set(TARGET_LABELS).union(*(labels[n] for n in names))
        unknown = promql_label_names(rule["expr"]) - known
        assert not unknown, f"{rule['alert']}: labels {sorted(unknown)} are not on {sorted(names)}"


def test_latency_alert_matches_the_default_deadline(rules: list[dict[str, Any]]) -> None:
    rule = next(r for r in rules if r["alert"] == "L2GQueryLatencyOverDeadline")
    threshold = float(rule["expr"].rsplit(">", 1)[1])
    assert threshold == QuerySettings().default_timeout_s, "keep the alert at L2G_QUERY__DEFAULT_TIMEOUT_S"


def test_exported_names_include_suffixed_forms() -> None:
    names = exported_series_names()
    assert {"l2g_queries_total", "l2g_query_latency_seconds_bucket", "l2g_query_latency_seconds_sum",
            "l2g_query_latency_seconds_count", "l2g_ready", "l2g_build_info"} <= names
    assert "l2g_queries" not in names


@pytest.mark.parametrize(("expr", "metrics", "labels"), [
    ('up{job="l2g-worker"} == 0', {"up"}, {"job"}),
    ('absent(up{job="l2g-worker"} == 1)', {"up"}, {"job"}),
    ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{stage="total"}[5m]))) > 2', {"a_bucket"},
     {"le", "stage"}),
    ("time() - max(b_seconds) > 300", {"b_seconds"}, set()),
    ("sum without (instance) (rate(c_total[$__rate_interval] offset 1h)) / on(job) group_left d", {"c_total", "d"},
     {"instance", "job"}),
    ('label_values(l2g_ready, instance)', {"l2g_ready"}, {"instance"}),
    ('sum(rate(x_total{camera=~"$camera", instance=~"${instance}"}[1m])) * 1e3', {"x_total"},
     {"camera", "instance"}),
])
def test_promql_parser(expr: str, metrics: set[str], labels: set[str]) -> None:
    assert promql_metric_names(expr) == metrics
    assert promql_label_names(expr) == labels


def test_every_alert_has_a_firing_unit_test(rules: list[dict[str, Any]]) -> None:
    tests = yaml.safe_load(ALERTS_TEST_FILE.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [ALERTS_FILE.name]
    firing = {case["alertname"] for test in tests["tests"] for case in test.get("alert_rule_test", [])
              if case.get("exp_alerts")}
    missing = {rule["alert"] for rule in rules} - firing
    assert not missing, f"alerts without a firing case in {ALERTS_TEST_FILE.name}: {sorted(missing)}"


@_harness.skip_unless(shutil.which("promtool") is not None, _harness.Kind.PROMTOOL,
                      "promtool not installed (apt-get install prometheus)")
@pytest.mark.parametrize("args", [("check", "config", str(PROMETHEUS_CONFIG)), ("check", "rules", str(ALERTS_FILE)),
                                  ("test", "rules", str(ALERTS_TEST_FILE))],
                         ids=["check-config", "check-rules", "test-rules"])
def test_promtool(args: tuple[str, ...]) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
