#!/usr/bin/env python3
"""Generate the l2g-stream Grafana dashboard (``deploy/grafana/dashboards/l2g.json``).

The committed JSON is this script's output; ``tests/test_deploy`` checks that they agree and that every
PromQL expression queries only metrics the service exports. Edit this file, then run::

    python deploy/grafana/build_dashboard.py          # rewrite dashboards/l2g.json
    python deploy/grafana/build_dashboard.py --check  # exit 1 when the committed JSON is stale

Standard library only, so it runs without the project installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OUTPUT", "build_dashboard", "expressions", "render"]

OUTPUT = Path(__file__).resolve().parent / "dashboards" / "l2g.json"

JSON = dict[str, Any]

DATASOURCE: JSON = {"type": "prometheus", "uid": "${datasource}"}
INSTANCE = 'instance=~"$instance"'
CAMERA = 'camera=~"$camera"'
RATE = "$__rate_interval"
GRID_WIDTH = 24


@dataclass(frozen=True)
class Target:
    """One PromQL query of a panel; ``legend`` is Grafana's legendFormat."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel before layout: ``kind`` is ``timeseries`` or ``stat``; ``width`` in grid columns (of 24)."""

    title: str
    description: str
    targets: tuple[Target, ...]
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    no_value: str | None = None
    stack: bool = False
    minimum: float | None = None
    maximum: float | None = None


@dataclass
class Row:
    title: str
    panels: list[Panel] = field(default_factory=list)
    collapsed: bool = False


def quantile(q: float, metric: str, by: str, selector: str = INSTANCE) -> str:
    """``histogram_quantile`` of a histogram's ``_bucket`` series, aggregated over workers."""
    group = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def rows() -> list[Row]:
    """The dashboard's content: rows of panels, top to bottom."""
    overview = Row("Overview", [
        Panel("Ready workers", "Workers reporting l2g_ready=1 (partitions assigned, snapshot loaded, model warm) "
              "out of the workers being scraped.",
              (Target(f"sum(l2g_ready{{{INSTANCE}}})", "ready"),
               Target(f"count(l2g_ready{{{INSTANCE}}})", "scraped")),
              kind="stat", width=4, height=4),
        Panel("Indexed frames", "Frames in the rolling index, summed over all shards (workers).",
              (Target(f"sum(l2g_index_frames{{{INSTANCE}}})", "frames"),), kind="stat", width=4, height=4),
        Panel("Index time span", "Widest time span covered by one shard: newest minus oldest indexed frame.",
              (Target(f"max(l2g_index_time_span_seconds{{{INSTANCE}}})", "span"),), unit="s", kind="stat",
              width=4, height=4),
        Panel("Freshness", "Age of the newest indexed frame over all shards (now minus its timestamp).",
              (Target(f"time() - max(l2g_index_newest_timestamp_seconds{{{INSTANCE}}})", "age"),), unit="s",
              kind="stat", width=4, height=4),
        Panel("Query latency p99", "End-to-end (stage=total) 99th percentile query latency.",
              (Target(quantile(0.99, "l2g_query_latency_seconds", "", f'stage="total", {INSTANCE}'), "p99"),),
              unit="s", kind="stat", width=4, height=4),
        Panel("Dead letters (5m)", "Messages sent to the dead-letter topic in the last 5 minutes.",
              (Target(f"sum(increase(l2g_dead_letters_total{{{INSTANCE}}}[5m]))", "dead letters"),),
              kind="stat", width=4, height=4),
    ])

    ingest = Row("Ingest", [
        Panel("Indexed frames/s per camera", "Rate of frames added to the index, per camera.",
              (Target(f"sum by (camera) (rate(l2g_frames_indexed_total{{{CAMERA}, {INSTANCE}}}[{RATE}]))",
                      "{{camera}}"),), unit="fps"),
        Panel("Frame pipeline (selected cameras)", "Decoded, sampled, skipped and indexed frames per second: "
              "decoded - sampled is the sampling reduction; skipped are sampled frames that were not indexed.",
              (Target(f"sum(rate(l2g_frames_decoded_total{{{CAMERA}, {INSTANCE}}}[{RATE}]))", "decoded"),
               Target(f"sum(rate(l2g_frames_sampled_total{{{CAMERA}, {INSTANCE}}}[{RATE}]))", "sampled"),
               Target(f"sum(rate(l2g_frames_skipped_total{{{CAMERA}, {INSTANCE}}}[{RATE}]))", "skipped"),
               Target(f"sum(rate(l2g_frames_indexed_total{{{CAMERA}, {INSTANCE}}}[{RATE}]))", "indexed")),
              unit="fps"),
        Panel("Skipped frames/s by camera and reason", "Frames dropped before indexing, by reason "
              "(for example near-duplicates or load shedding).",
              (Target(f"sum by (camera, reason) (rate(l2g_frames_skipped_total{{{CAMERA}, {INSTANCE}}}[{RATE}]))",
                      "{{camera}} {{reason}}"),), unit="fps", stack=True),
        Panel("Sampling rate per camera", "Current frame sampling rate chosen per camera (frames per second of "
              "video that are extracted).",
              (Target(f"max by (camera) (l2g_sampling_fps{{{CAMERA}, {INSTANCE}}})", "{{camera}}"),), unit="fps"),
        Panel("Chunks consumed/s per partition", "Video chunks consumed per topic partition; each partition "
              "is owned by exactly one worker of the consumer group.",
              (Target(f"sum by (topic, partition) (rate(l2g_chunks_consumed_total{{{INSTANCE}}}[{RATE}]))",
                      "{{topic}}/{{partition}}"),), unit="ops"),
        Panel("Consumer lag per partition", "Messages between the committed/consumed offset and the end of "
              "each partition, as reported by the worker that owns it.",
              (Target(f"max by (topic, partition) (l2g_consumer_lag_messages{{{INSTANCE}}})",
                      "{{topic}}/{{partition}}"),), unit="short", minimum=0),
        Panel("Consumer lag, broker side", "Messages behind per consumer group and topic, read from the broker by "
              "kafka-exporter (compose): unlike the workers' own gauge it survives the workers.",
              (Target("sum by (consumergroup, topic) (kafka_consumergroup_lag_sum)", "{{consumergroup}} {{topic}}"),),
              unit="short", minimum=0, no_value="No kafka-exporter"),
        Panel("Lag in seconds, broker side", "Broker-side lag divided by the topic's produce rate: how many "
              "seconds of incoming video (or queries) each group is behind.",
              (Target(f"sum by (consumergroup, topic) (kafka_consumergroup_lag_sum) / on (topic) group_left "
                      f"sum by (topic) (rate(kafka_topic_partition_current_offset[{RATE}]))",
                      "{{consumergroup}} {{topic}}"),), unit="s", minimum=0, no_value="No kafka-exporter"),
        Panel("Lag in seconds per partition", "As reported by the worker that owns each partition: 0 when it is at "
              "the end, else how long the message it is processing waited in the topic (now minus its Kafka "
              "timestamp). Independent of the video's event time; gone with the worker.",
              (Target(f"max by (topic, partition) (l2g_consumer_lag_seconds{{{INSTANCE}}})",
                      "{{topic}}/{{partition}}"),), unit="s", minimum=0),
        Panel("Chunk decode time", "Time to decode one video chunk (PyAV), p50 and p99 over all workers.",
              (Target(quantile(0.5, "l2g_decode_chunk_seconds", ""), "p50"),
               Target(quantile(0.99, "l2g_decode_chunk_seconds", ""), "p99")), unit="s"),
    ])

    queries = Row("Queries", [
        Panel("Queries/s by mode and outcome", "Answered queries per second by retrieval mode and outcome.",
              (Target(f"sum by (mode, outcome) (rate(l2g_queries_total{{{INSTANCE}}}[{RATE}]))",
                      "{{mode}} {{outcome}}"),), unit="reqps", stack=True),
        Panel("End-to-end latency percentiles", "Query latency (stage=total): p50, p95, p99.",
              tuple(Target(quantile(q, "l2g_query_latency_seconds", "", f'stage="total", {INSTANCE}'), f"p{p}")
                    for q, p in ((0.5, "50"), (0.95, "95"), (0.99, "99"))), unit="s"),
        *(Panel(f"Latency p{p} per stage", f"{p}th percentile of query latency per stage: queue (sent to read), "
                "decode_image, extract and stage1 (local search over its own shards) on every worker; stage2 "
                "(merge and L2G re-ranking) and total on the worker that merges the query.",
                (Target(quantile(q, "l2g_query_latency_seconds", "stage"), "{{stage}}"),), unit="s", width=8)
          for q, p in ((0.5, "50"), (0.95, "95"), (0.99, "99"))),
    ])

    index = Row("Index", [
        Panel("Indexed frames per worker", "Frames held by each worker's shard of the rolling index.",
              (Target(f"sum by (instance) (l2g_index_frames{{{INSTANCE}}})", "{{instance}}"),), stack=True, width=8),
        Panel("Indexed local features per worker", "Local features held by each worker's shard.",
              (Target(f"sum by (instance) (l2g_index_features{{{INSTANCE}}})", "{{instance}}"),), stack=True,
              width=8),
        Panel("Index memory per worker", "Bytes held by each worker's index (vectors, codes and re-rank data).",
              (Target(f"sum by (instance) (l2g_index_bytes{{{INSTANCE}}})", "{{instance}}"),), unit="bytes",
              stack=True, width=8),
        Panel("Index time span per worker", "Newest minus oldest indexed frame timestamp per shard; bounded "
              "by the retention (L2G_INDEX__RETENTION_SECONDS).",
              (Target(f"max by (instance) (l2g_index_time_span_seconds{{{INSTANCE}}})", "{{instance}}"),), unit="s",
              width=8),
        Panel("Freshness per worker", "Age of the newest indexed frame per shard.",
              (Target(f"time() - max by (instance) (l2g_index_newest_timestamp_seconds{{{INSTANCE}}})",
                      "{{instance}}"),), unit="s", width=8),
        Panel("Snapshot duration", "Time to write (or load) an index snapshot, p50 and p99.",
              (Target(quantile(0.5, "l2g_snapshot_seconds", ""), "p50"),
               Target(quantile(0.99, "l2g_snapshot_seconds", ""), "p99")), unit="s", width=8),
    ])

    dead_letters = Row("Dead letters", [
        Panel("Dead letters/s by stage and reason", "Messages published to the DLQ topic, by the stage that "
              "failed and the reason.",
              (Target(f"sum by (stage, reason) (rate(l2g_dead_letters_total{{{INSTANCE}}}[{RATE}]))",
                      "{{stage}} {{reason}}"),), unit="ops", stack=True, width=24),
    ])

    extractor = Row("Extractor", [
        Panel("Extractor batch time", "Time to extract local and global features for one batch, p50 and p99 "
              "per extractor.",
              (Target(quantile(0.5, "l2g_extractor_batch_seconds", "extractor"), "{{extractor}} p50"),
               Target(quantile(0.99, "l2g_extractor_batch_seconds", "extractor"), "{{extractor}} p99")), unit="s"),
        Panel("Extractor batches/s", "Batches run per second per extractor.",
              (Target(f"sum by (extractor) (rate(l2g_extractor_batch_seconds_count{{{INSTANCE}}}[{RATE}]))",
                      "{{extractor}}"),), unit="ops"),
    ])

    gpu = Row("GPU (DCGM exporter)", [
        Panel("GPU utilisation", "DCGM_FI_DEV_GPU_UTIL per GPU, from the NVIDIA DCGM exporter (compose profile "
              "`gpu`, or the cluster's dcgm-exporter). Empty on CPU-only deployments.",
              (Target("avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} GPU {{gpu}}"),),
              unit="percent", width=24, no_value="No DCGM exporter (CPU-only deployment)", minimum=0,
              maximum=100),
    ])
    return [overview, ingest, queries, index, dead_letters, extractor, gpu]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> JSON:
    defaults: JSON = {"unit": panel.unit}
    if panel.no_value is not None:
        defaults["noValue"] = panel.no_value
    if panel.minimum is not None:
        defaults["min"] = panel.minimum
    if panel.maximum is not None:
        defaults["max"] = panel.maximum
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10 if panel.stack else 0,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        options: JSON = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {
                "datasource": DATASOURCE,
                "expr": target.expr,
                "legendFormat": target.legend,
                "range": True,
                "refId": chr(ord("A") + i),
            }
            for i, target in enumerate(panel.targets)
        ],
    }


def _layout(content: list[Row]) -> list[JSON]:
    """Place rows and panels on Grafana's 24-column grid, left to right, wrapping at the edge."""
    out: list[JSON] = []
    panel_id = 1
    y = 0
    for row in content:
        row_json: JSON = {
            "id": panel_id,
            "type": "row",
            "title": row.title,
            "collapsed": row.collapsed,
            "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
            "panels": [],
        }
        panel_id += 1
        y += 1
        out.append(row_json)
        x = 0
        line_height = 0
        for panel in row.panels:
            if x + panel.width > GRID_WIDTH:
                x, y, line_height = 0, y + line_height, 0
            placed = _panel_json(panel, panel_id, x, y)
            panel_id += 1
            (row_json["panels"] if row.collapsed else out).append(placed)
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return out


def _templating() -> JSON:
    def query_variable(name: str, label: str, query: str) -> JSON:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": query,
            "query": {"query": query, "refId": f"{name}-variable"},
            "refresh": 2,
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
            "hide": 0,
            "options": [],
            "regex": "",
        }

    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "includeAll": False,
                "multi": False,
                "options": [],
                "refresh": 1,
                "regex": "",
            },
            query_variable("instance", "Worker", "label_values(l2g_ready, instance)"),
            query_variable("camera", "Camera", "label_values(l2g_frames_decoded_total, camera)"),
        ]
    }


def build_dashboard() -> JSON:
    """The dashboard as Grafana's JSON model (schemaVersion 39, Grafana 10.4 and later)."""
    return {
        "uid": "l2g-stream",
        "title": "l2g-stream",
        "description": "Kafka video ingest, rolling index, Local-to-Global queries, dead letters and GPU "
                       "of l2g-stream workers. Generated by deploy/grafana/build_dashboard.py.",
        "tags": ["l2g-stream", "kafka", "retrieval"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "links": [],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": _templating(),
        "panels": _layout(rows()),
    }


def render() -> str:
    """The committed file's exact text."""
    return json.dumps(build_dashboard(), indent=2, ensure_ascii=False) + "\n"


def _walk_panels(panels: list[JSON]) -> list[JSON]:
    out: list[JSON] = []
    for panel in panels:
        out.append(panel)
        out.extend(_walk_panels(panel.get("panels", [])))
    return out


def expressions(dashboard: JSON) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and query-variable definitions."""
    exprs = [t["expr"] for p in _walk_panels(dashboard["panels"]) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT}")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is stale: run python deploy/grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
