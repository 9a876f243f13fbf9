"""The compose stack: services, KRaft settings, worker env (real settings fields that validate), healthchecks,
topics, mounts, and Prometheus scrape targets that match the worker service and port."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.test_deploy.support import (
    COMPOSE_FILE,
    PROMETHEUS_CONFIG,
    cli_settings,
    settings_env_names,
    settings_from_env,
)

_SUBST = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def _substitute(value: Any) -> str:
    """Resolve compose's ``${VAR:-default}`` with the defaults (what an unconfigured `up` runs)."""
    text = str(value)

    def repl(match: re.Match[str]) -> str:
        assert match.group(2) is not None, f"{match.group(0)} has no default: `up` would fail without it"
        return match.group(2)

    return _SUBST.sub(repl, text).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def worker_env(services: dict[str, Any]) -> dict[str, str]:
    env = services["worker"]["environment"]
    assert isinstance(env, dict), "worker environment must be a mapping (the x-worker-env anchor)"
    return {str(k): _substitute(v) for k, v in env.items()}


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_services_present(services: dict[str, Any]) -> None:
    assert {"kafka", "topic-init", "worker", "prometheus", "grafana", "dcgm-exporter"} <= set(services)
    assert services["dcgm-exporter"].get("profiles") == ["gpu"], "the GPU exporter must be opt-in"


def test_kafka_is_kraft(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    env = _env(kafka)
    assert "zookeeper" not in services and not any("ZOOKEEPER" in k for k in env)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert any(v.startswith(f"{node_id}@") for v in voters), "the node must vote in its own quorum"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    listeners = dict(item.split("://", 1) for item in env["KAFKA_LISTENERS"].split(","))
    assert controller in listeners
    protocol_map = dict(item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocol_map)
    advertised = dict(item.split("://", 1) for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert controller not in advertised, "the controller listener is not advertised to clients"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    # CLUSTER_ID: base64url of 16 bytes (22 characters, no padding).
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"])
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # Single node: every internal topic must be replicated once.
    for key, value in env.items():
        if key.endswith(("REPLICATION_FACTOR", "MIN_ISR")):
            assert value == "1", key


def test_worker_env_names_are_settings_fields(worker_env: dict[str, str]) -> None:
    valid = settings_env_names()
    unknown = sorted(name for name in worker_env if name.startswith("L2G_") and name not in valid)
    assert not unknown, f"not fields of stream.settings.Settings: {unknown}"
    assert all(name.startswith("L2G_") for name in worker_env), "workers read L2G_* only"


def test_worker_env_validates(worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_from_env(worker_env, monkeypatch)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.topics.create is False, "topic-init owns the topics"
    assert settings.index.snapshot_dir is not None, "without snapshots nothing is committed"


def test_worker_command_reads_the_env(worker_env: dict[str, str]) -> None:
    """The image's command (`l2g-stream worker`) resolves the compose env as intended."""
    printed = cli_settings(worker_env)
    assert printed["kafka"]["bootstrap_servers"] == "kafka:9092"
    assert printed["topics"]["candidates"] == worker_env["L2G_TOPICS__CANDIDATES"]
    assert printed["query"]["merge_group_id"] == worker_env["L2G_QUERY__MERGE_GROUP_ID"]
    assert printed["http"]["port"] == int(worker_env["L2G_HTTP__PORT"])
    assert printed["topics"]["create"] is False


def test_worker_bootstrap_is_a_kafka_listener(services: dict[str, Any], worker_env: dict[str, str]) -> None:
    advertised = _env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
    assert any(entry.endswith(f"://{worker_env['L2G_KAFKA__BOOTSTRAP_SERVERS']}") for entry in advertised.split(","))


def _topic_specs(services: dict[str, Any]) -> dict[str, int]:
    specs = _env(services["topic-init"])["TOPICS"].split()
    return {name: int(partitions) for name, partitions in (s.split(":") for s in specs)}


def test_topic_init_creates_every_worker_topic(services: dict[str, Any], worker_env: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    topics = _topic_specs(services)
    settings = settings_from_env(worker_env, monkeypatch)
    # Every topic name of TopicSettings (the str fields), as the workers resolve them.
    wanted = {getattr(settings.topics, name) for name, field in type(settings.topics).model_fields.items()
              if field.annotation is str}
    assert len(wanted) >= 4
    assert wanted <= set(topics), f"topics the workers use but topic-init does not create: {wanted - set(topics)}"
    # Message size: the topic accepts what the producer may send.
    max_bytes = int(_env(services["topic-init"])["MAX_MESSAGE_BYTES"])
    assert int(worker_env["L2G_KAFKA__MAX_MESSAGE_BYTES"]) <= max_bytes
    assert int(_env(services["kafka"])["KAFKA_MESSAGE_MAX_BYTES"]) >= max_bytes


def test_workers_do_not_outnumber_video_partitions(compose: dict[str, Any], services: dict[str, Any],
                                                   worker_env: dict[str, str]) -> None:
    replicas = int(_substitute(services["worker"]["deploy"]["replicas"]))
    partitions = _topic_specs(services)[worker_env["L2G_TOPICS__VIDEO"]]
    assert 1 <= replicas <= partitions
    assert f"({partitions})" in COMPOSE_FILE.read_text(encoding="utf-8"), "the header names the partition count"


def test_healthchecks_and_startup_order(services: dict[str, Any], worker_env: dict[str, str]) -> None:
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {dep: {} for dep in depends}
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if (spec or {}).get("condition") == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy, but it has none"
    assert services["topic-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    check = services["worker"]["healthcheck"]
    command = " ".join(check["test"]) if isinstance(check["test"], list) else check["test"]
    assert "/healthz" in command
    assert "L2G_HTTP__PORT" in command or worker_env["L2G_HTTP__PORT"] in command
    for name in ("kafka", "worker", "prometheus", "grafana"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
        assert services[name]["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}


def test_mounted_files_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).resolve().exists(), f"{name}: {source} does not exist"


def test_worker_build_context(services: dict[str, Any]) -> None:
    build = services["worker"]["build"]
    context = (COMPOSE_FILE.parent / build["context"]).resolve()
    assert (context / build["dockerfile"]).is_file()
    assert (context / "pyproject.toml").is_file()


def test_prometheus_scrapes_the_workers(services: dict[str, Any], worker_env: dict[str, str]) -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    port = int(worker_env["L2G_HTTP__PORT"])
    worker_job = jobs["l2g-worker"]
    assert worker_job.get("metrics_path", "/metrics") == "/metrics"
    discovered = [(name, sd["port"]) for sd in worker_job.get("dns_sd_configs", []) for name in sd["names"]]
    static = [tuple(t.rsplit(":", 1)) for sc in worker_job.get("static_configs", []) for t in sc["targets"]]
    targets = {(host, int(p)) for host, p in [*discovered, *static]}
    assert targets == {("worker", port)}, targets
    assert str(port) in [str(p) for p in services["worker"].get("expose", [])]
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            for name in sd["names"]:
                assert name in services, f"job {job['job_name']} scrapes unknown service {name}"
                assert str(sd["port"]) in [str(p) for p in services[name].get("expose", [])], (job["job_name"], name)


def test_grafana_datasource_points_at_prometheus(services: dict[str, Any]) -> None:
    from tests.test_deploy.support import DEPLOY

    sources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    url = sources["datasources"][0]["url"]
    assert url == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"]


@pytest.mark.slow
def test_sample_publisher_feeds_the_stack(services: dict[str, Any], worker_env: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """`up` shows a live dashboard: a publisher writes synthetic cameras and publishes them, over and over."""
    import shlex
    import subprocess
    import sys

    from stream.video import segment_file

    publisher = services["sample-publisher"]
    assert publisher["image"] == services["worker"]["image"]
    assert publisher["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    env = {k: _substitute(v) for k, v in _env(publisher).items()}
    l2g = {k: v for k, v in env.items() if k.startswith("L2G_")}
    assert l2g == worker_env, "the publisher must reach the same broker and topics as the workers"
    settings_from_env(l2g, monkeypatch)
    script = publisher["command"][0]
    assert "l2g-stream publish /tmp/samples --realtime" in script and "while true" in script
    code = shlex.split(script.split("python -c ", 1)[1].split("\nwhile", 1)[0])[0]
    code = code.replace("/tmp/samples", str(tmp_path))
    run_env = {"SAMPLE_CAMERAS": "2", "SAMPLE_SECONDS": "2", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], env=run_env, check=True, timeout=120, cwd=COMPOSE_FILE.parents[2])
    files = sorted(tmp_path.glob("*.ts"))
    assert [f.name for f in files] == ["sample-1.ts", "sample-2.ts"]
    segments = list(segment_file(files[0], segment_seconds=2.0))
    assert sum(s.frame_count for s in segments) == 20


def test_kafka_exporter_is_scraped(services: dict[str, Any]) -> None:
    """Broker-side lag for the dashboard: survives the workers."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    exporter = services["kafka-exporter"]
    assert "--kafka.server=kafka:9092" in exporter["command"]
    assert exporter["depends_on"]["kafka"]["condition"] == "service_healthy"
    (sd,) = jobs["kafka-exporter"]["dns_sd_configs"]
    assert sd["names"] == ["kafka-exporter"] and str(sd["port"]) in [str(p) for p in exporter["expose"]]


def test_gpu_profile_reserves_a_gpu_for_gpu_workers(services: dict[str, Any]) -> None:
    """The `gpu` profile runs workers of the CUDA image with one GPU reserved each and the index on it."""
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    assert gpu["environment"]["L2G_INDEX__DEVICE"] == "cuda"
    assert gpu["command"] == services["worker"]["command"]
    assert "deploy" not in services["worker"] or "resources" not in services["worker"]["deploy"]
