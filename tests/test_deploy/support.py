"""Shared helpers of the deployment tests: valid settings env names, exported metric names, PromQL parsing,
and the offline Helm renderer."""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from stream.metrics import StreamMetrics
from stream.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose" / "docker-compose.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_FILE = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST_FILE = DEPLOY / "prometheus" / "alerts_test.yml"
CHART_DIR = DEPLOY / "helm" / "l2g-stream"
DASHBOARD_FILE = DEPLOY / "grafana" / "dashboards" / "l2g.json"
RENDERER_DIR = Path(__file__).resolve().parent / "helm_render"

# Series that are not the service's own but may legitimately appear in alerts and panels.
PROMETHEUS_BUILTIN = frozenset({"up"})
EXTERNAL_PREFIXES = ("DCGM_FI_", "kafka_")  # NVIDIA DCGM exporter (GPU row), kafka-exporter (broker-side lag)
# Labels every scraped series carries (target labels) or that histograms add.
TARGET_LABELS = frozenset({"instance", "job", "le"})


def load_module(path: Path, name: str) -> ModuleType:
    """Import a script that is not in a package (``deploy/grafana/build_dashboard.py``, ...)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    if name in sys.modules:
        return sys.modules[name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


# --- settings -------------------------------------------------------------------------------------------


def _walk_fields(model: type[BaseModel], path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _walk_fields(annotation, (*path, name))
        else:
            yield (*path, name)


@functools.cache
def settings_env_names() -> frozenset[str]:
    """Every environment variable ``Settings`` reads: ``L2G_<GROUP>__<FIELD>``, derived from the model fields."""
    return frozenset(ENV_PREFIX + "__".join(p).upper() for p in _walk_fields(Settings, ()))


# Variables read outside the model fields.
EXTRA_ENV_NAMES = frozenset({f"{ENV_PREFIX}CONFIG_FILE"})


def settings_from_env(env: Mapping[str, str], monkeypatch: Any) -> Settings:
    """Validate ``env`` as a worker would see it: clear every ``L2G_*`` variable, set ``env``, load."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.load()


def cli_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings ``l2g-stream worker --print-settings`` reports in a process whose only ``L2G_*`` variables are
    ``env`` (what a container of the compose stack or the chart would run with)."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    proc = subprocess.run([sys.executable, "-m", "stream.cli", "worker", "--print-settings"], cwd=ROOT,
                          env={**clean, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


# --- metrics --------------------------------------------------------------------------------------------


@functools.cache
def exported_metric_families() -> dict[str, str]:
    """``{family name: type}`` of a fresh :class:`StreamMetrics` (counters without ``_total``)."""
    metrics = StreamMetrics(CollectorRegistry())
    return {family.name: family.type for family in metrics.registry.collect()}


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}


@functools.cache
def exported_series_names() -> frozenset[str]:
    """Every series name a worker can expose: families with their ``_total``/``_bucket``/... forms."""
    names: set[str] = set()
    for family, kind in exported_metric_families().items():
        names.update(family + suffix for suffix in _SUFFIXES.get(kind, ("",)))
    return frozenset(names)


@functools.cache
def metric_labels() -> dict[str, frozenset[str]]:
    """``{series name: label names}`` for every series of :func:`exported_series_names`."""
    metrics = StreamMetrics(CollectorRegistry())
    by_family: dict[str, tuple[str, ...]] = {}
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        labelnames = getattr(value, "_labelnames", None)
        if isinstance(name, str) and labelnames is not None:
            by_family[name] = tuple(labelnames)
    out: dict[str, frozenset[str]] = {}
    for family, kind in exported_metric_families().items():
        labels = set(by_family.get(family, ()))
        if kind == "info":
            labels |= {"version", "extractor", "worker"}
        for suffix in _SUFFIXES.get(kind, ("",)):
            out[family + suffix] = frozenset(labels | ({"le"} if suffix == "_bucket" else set()))
    return out


def is_known_series(name: str) -> bool:
    """A series an alert or panel may query: the service's own, Prometheus' ``up``, or an exporter's."""
    return name in exported_series_names() or name in PROMETHEUS_BUILTIN or name.startswith(EXTERNAL_PREFIXES)


# --- PromQL ---------------------------------------------------------------------------------------------

_KEYWORDS = frozenset({
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan", "atan2",
})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENT = re.compile(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def _clean(expr: str) -> str:
    expr = _STRING.sub('""', expr)
    return _VARIABLE.sub("0", expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression (or a Grafana ``label_values(metric, label)`` query) selects.

    Function and aggregation names (an identifier followed by ``(``), keywords, label names in matchers and
    in ``by``/``without``/``on``/``ignoring`` clauses, durations, strings and Grafana variables are skipped.
    """
    grafana = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", expr, re.S)
    if grafana:
        expr = grafana.group(1)
    text = _clean(expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\boffset\s+\S+", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name = match.group(1)
        if name.lower() in _KEYWORDS or re.match(r"\s*\(", text[match.end():]):
            continue
        names.add(name)
    return names


def promql_label_names(expr: str) -> set[str]:
    """Label names used in matchers, grouping clauses and a ``label_values`` query."""
    labels: set[str] = set()
    grafana = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", expr, re.S)
    if grafana:
        labels.add(grafana.group(2))
        expr = grafana.group(1)
    text = _clean(expr)
    for match in _SELECTOR.finditer(text):
        labels.update(_MATCHER.findall(match.group(2)))
    for match in _GROUPING.finditer(text):
        labels.update(x.strip() for x in match.group(2).split(",") if x.strip())
    return labels


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the committed dashboard (panels and template variables)."""
    builder = load_module(DEPLOY / "grafana" / "build_dashboard.py", "l2g_build_dashboard")
    expressions: list[str] = builder.expressions(json.loads(DASHBOARD_FILE.read_text(encoding="utf-8")))
    return expressions


def alert_expressions() -> list[str]:
    """Every alert expression of ``alerts.yml``."""
    data = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    return [str(rule["expr"]) for group in data["groups"] for rule in group["rules"]]


def service_series(expressions: list[str]) -> set[str]:
    """The service's own series the expressions query (``up`` and exporters' series left out)."""
    names = set().union(*(promql_metric_names(e) for e in expressions))
    return {n for n in names if n not in PROMETHEUS_BUILTIN and not n.startswith(EXTERNAL_PREFIXES)}


def exposition_series(families: Any) -> set[str]:
    """Series names a parsed exposition declares (``# TYPE``), with the suffixes of each family's type."""
    return {family.name + suffix for family in families for suffix in _SUFFIXES.get(family.type, ("",))}


# --- Helm -----------------------------------------------------------------------------------------------


class RenderError(Exception):
    """The chart failed to render (``fail``, ``required`` or a template error)."""


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Helm's value merging: mappings merge recursively, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def chart_values() -> dict[str, Any]:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    assert isinstance(values, dict)
    return values


def build_renderer(out_dir: Path) -> Path | None:
    """Build the Go renderer into ``out_dir``; None when no Go toolchain is installed."""
    go = shutil.which("go")
    if go is None:
        return None
    binary = out_dir / "helm_render"
    # Standard library only: no module download is ever needed, so forbid it (offline CI).
    env = {**os.environ, "GOPROXY": "off", "GOFLAGS": "", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    proc = subprocess.run([go, "build", "-o", str(binary), "main.go"], cwd=RENDERER_DIR, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"go build of the Helm renderer failed:\n{proc.stderr}")
    return binary


def render_chart(renderer: Path, overrides: Mapping[str, Any] | None = None,
                 release: str = "l2g") -> dict[str, str]:
    """Render every template of the chart with ``values.yaml`` merged with ``overrides``.

    Returns:
        ``{template file name: rendered text}`` (helpers excluded).

    Raises:
        RenderError: a template failed (the chart's own checks use ``fail``).
    """
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    templates = {f"l2g-stream/templates/{p.name}": p.read_text(encoding="utf-8")
                 for p in sorted((CHART_DIR / "templates").iterdir()) if p.is_file()}
    payload = {
        "templates": templates,
        "values": deep_merge(chart_values(), overrides or {}),
        "chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
        "release": {"Name": release, "Namespace": "default", "Service": "Helm"},
        "files": {p.relative_to(CHART_DIR).as_posix(): p.read_text(encoding="utf-8")
                  for p in sorted((CHART_DIR / "files").rglob("*")) if p.is_file()},
    }
    proc = subprocess.run([str(renderer)], input=json.dumps(payload), capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    rendered: dict[str, str] = json.loads(proc.stdout)
    return {Path(name).name: text for name, text in rendered.items()}


def manifests(rendered: Mapping[str, str]) -> list[dict[str, Any]]:
    """Parse every rendered file (except NOTES.txt) as YAML documents; empty documents are dropped."""
    docs: list[dict[str, Any]] = []
    for name, text in sorted(rendered.items()):
        if name.endswith(".txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{name}: a manifest must be a mapping, got {doc!r}"
            for key in ("apiVersion", "kind", "metadata"):
                assert key in doc, f"{name}: manifest without {key}: {doc}"
            docs.append(doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
