"""The Grafana dashboard: the committed JSON is exactly ``build_dashboard.py``'s output, every PromQL expression
queries metrics ``StreamMetrics`` exports (with labels they carry), and the layout is valid."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.test_deploy.support import (
    DASHBOARD_FILE,
    DEPLOY,
    TARGET_LABELS,
    is_known_series,
    load_module,
    metric_labels,
    promql_label_names,
    promql_metric_names,
)

BUILDER = DEPLOY / "grafana" / "build_dashboard.py"


@pytest.fixture(scope="module")
def builder() -> Any:
    return load_module(BUILDER, "l2g_build_dashboard")


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_committed_json_is_generated(builder: Any, dashboard: dict[str, Any]) -> None:
    assert DASHBOARD_FILE.read_text(encoding="utf-8") == builder.render(), \
        "stale dashboard: run python deploy/grafana/build_dashboard.py"
    assert dashboard == builder.build_dashboard()
    assert builder.main(["--check"]) == 0


def test_every_expression_queries_exported_metrics(builder: Any, dashboard: dict[str, Any]) -> None:
    exprs = builder.expressions(dashboard)
    assert len(exprs) > 20
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = sorted(n for n in names if not is_known_series(n))
        assert not unknown, f"{expr!r} queries metrics StreamMetrics does not export: {unknown}"


def test_every_label_used_exists(builder: Any, dashboard: dict[str, Any]) -> None:
    labels = metric_labels()
    for expr in builder.expressions(dashboard):
        names = {n for n in promql_metric_names(expr) if n in labels}
        if not names:
            continue
        known = set(TARGET_LABELS).union(*(labels[n] for n in names))
        unknown = promql_label_names(expr) - known
        assert not unknown, f"{expr!r}: labels {sorted(unknown)} are not on {sorted(names)}"


def test_layout(builder: Any, dashboard: dict[str, Any]) -> None:
    panels = builder._walk_panels(dashboard["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
            assert panel["datasource"]["uid"] == "${datasource}"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "instance", "camera"} <= variables


def test_provisioning_loads_the_dashboard(dashboard: dict[str, Any]) -> None:
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "l2g.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{path}:ro" in mounts
    assert dashboard["uid"] == "l2g-stream"
