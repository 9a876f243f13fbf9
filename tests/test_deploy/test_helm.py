"""The Helm chart, rendered offline with Go's text/template (``helm_render/main.go``; skipped without ``go``):
manifests parse, probes hit /healthz and /readyz on the configured port, env names are settings fields (and the
rendered ConfigMap validates as settings), KEDA never scales past the video partitions, GPU only when enabled,
SASL wiring, topic creation, and the chart's own validation failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.settings import IngestSettings
from tests import _harness
from tests.test_deploy.support import (
    ALERTS_FILE,
    CHART_DIR,
    DASHBOARD_FILE,
    RenderError,
    build_renderer,
    by_kind,
    chart_values,
    cli_settings,
    manifests,
    render_chart,
    settings_env_names,
    settings_from_env,
)

# Settings the chart deliberately does not carry in values.env: secrets come from a Secret, the worker id is
# the pod name.
# secrets come from kafkaAuth, the worker id from the pod name; the ui.* group configures `l2g-stream ui`, a
# separate client process the chart does not deploy (deploy/README.md)
NOT_IN_VALUES = {"L2G_KAFKA__SASL_USERNAME", "L2G_KAFKA__SASL_PASSWORD", "L2G_KAFKA__SSL_PASSWORD",
                 "L2G_RUNTIME__WORKER_ID", "L2G_UI__CAMERAS", "L2G_UI__HOST", "L2G_UI__MAX_QUERIES_PER_SESSION",
                 "L2G_UI__MAX_UPLOAD_BYTES", "L2G_UI__PORT", "L2G_UI__SESSION_TTL_S"}
SASL = {
    "env": {"L2G_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "L2G_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "L2G_KAFKA__SSL_CAFILE": "/etc/l2g/tls/ca.crt"},
    "kafkaAuth": {"enabled": True, "username": "l2g", "password": "s3cret", "sslPassword": "keypass"},
}


@pytest.fixture(scope="module")
def renderer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("go") is None:
        _harness.skip(_harness.Kind.GO, "no Go toolchain: the offline Helm renderer cannot be built")
    binary = build_renderer(tmp_path_factory.mktemp("helm_render"))
    assert binary is not None
    return binary


def render(renderer: Path, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    return manifests(render_chart(renderer, overrides))


def _worker(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    (deployment,) = by_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def _configmap(docs: list[dict[str, Any]]) -> dict[str, str]:
    (configmap,) = [d for d in by_kind(docs, "ConfigMap") if not d["metadata"]["name"].endswith("-dashboard")]
    data = configmap["data"]
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values must be strings"
    return dict(data)


# --- static checks (no renderer) ---------------------------------------------------------------------------


def test_values_env_mirrors_settings() -> None:
    env = set(chart_values()["env"])
    valid = settings_env_names()
    assert not env - valid, f"values.env names that are not settings fields: {sorted(env - valid)}"
    missing = valid - env - NOT_IN_VALUES
    assert not missing, f"settings missing from values.env (keep it 1:1): {sorted(missing)}"


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "l2g-stream"
    values = chart_values()
    topics = {f"L2G_TOPICS__{key.upper()}" for key in values["kafkaTopics"]["partitions"]}
    names = {k for k in settings_env_names() if k.startswith("L2G_TOPICS__")}
    topic_names = names - {"L2G_TOPICS__CREATE", "L2G_TOPICS__PARTITIONS", "L2G_TOPICS__REPLICATION_FACTOR",
                           "L2G_TOPICS__CHECK_INTERVAL_S"}
    assert topics == topic_names, "kafkaTopics.partitions must list every topic of stream.settings.TopicSettings"
    assert set(values["kafkaTopics"]["retentionMs"]) == set(values["kafkaTopics"]["partitions"])


# --- rendered ----------------------------------------------------------------------------------------------


def test_default_render(renderer: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(renderer)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "Job", "PersistentVolumeClaim", "PodDisruptionBudget", "Service"]
    deployment, container = _worker(docs)
    assert deployment["spec"]["replicas"] == chart_values()["replicaCount"]
    data = _configmap(docs)
    valid = settings_env_names()
    assert set(data) <= valid
    env_names = {e["name"] for e in container["env"]}
    assert env_names <= valid
    assert not any(v is None or v in {"None", "null", "<nil>"} for v in data.values()), data
    settings = settings_from_env({**data, "L2G_RUNTIME__WORKER_ID": "pod-0"}, monkeypatch)
    assert settings.topics.create is False
    assert str(settings.index.snapshot_dir) == container["volumeMounts"][0]["mountPath"]


def test_probes(renderer: Path) -> None:
    docs = render(renderer, {"env": {"L2G_HTTP__PORT": "9555"}, "service": {"port": 9555}})
    _, container = _worker(docs)
    (port,) = container["ports"]
    assert port["containerPort"] == 9555 and port["name"] == "http"
    paths = {}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        http = container[probe]["httpGet"]
        assert http["port"] in ("http", 9555)
        paths[probe] = http["path"]
    assert paths == {"livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/healthz"}
    (service,) = by_kind(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_keda_is_bounded_by_video_partitions(renderer: Path) -> None:
    partitions = chart_values()["kafkaTopics"]["partitions"]["video"]
    for wanted in (3, partitions, partitions + 10):
        docs = render(renderer, {"keda": {"enabled": True, "maxReplicaCount": wanted}})
        (scaled,) = by_kind(docs, "ScaledObject")
        assert scaled["spec"]["maxReplicaCount"] == min(wanted, partitions)
        assert scaled["spec"]["maxReplicaCount"] <= partitions
        (trigger,) = scaled["spec"]["triggers"]
        data = _configmap(docs)
        assert trigger["metadata"]["topic"] == data["L2G_TOPICS__VIDEO"]
        assert trigger["metadata"]["consumerGroup"] == data["L2G_INGEST__GROUP_ID"]
        deployment, _ = _worker(docs)
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]


def test_replicas_beyond_partitions_fail(renderer: Path) -> None:
    with pytest.raises(RenderError, match="partitions"):
        render_chart(renderer, {"replicaCount": 99})


def test_gpu_only_when_enabled(renderer: Path) -> None:
    cpu = render_chart(renderer)
    assert "nvidia.com/gpu" not in cpu["deployment.yaml"]
    docs = render(renderer, {"gpu": {"enabled": True, "count": 2}})
    _, container = _worker(docs)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    deployment, _ = _worker(docs)
    tolerations = deployment["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    _, cpu_container = _worker(manifests(cpu))
    assert "tolerations" not in _worker(manifests(cpu))[0]["spec"]["template"]["spec"]
    assert set(cpu_container["resources"]["limits"]) == {"cpu", "memory"}


def test_sasl_wiring(renderer: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(renderer, SASL)
    (secret,) = by_kind(docs, "Secret")
    secret_env = {k: v for k, v in secret["stringData"].items() if not k.startswith("KEDA_")}
    assert set(secret_env) <= settings_env_names()
    assert secret["stringData"]["KEDA_KAFKA_SASL"] == "scram_sha512"
    assert secret["stringData"]["KEDA_KAFKA_TLS"] == "enable"
    _, container = _worker(docs)
    refs = [next(iter(src.values()))["name"] for src in container["envFrom"]]
    assert secret["metadata"]["name"] in refs
    (job,) = by_kind(docs, "Job")
    job_container = job["spec"]["template"]["spec"]["containers"][0]
    assert secret["metadata"]["name"] in [next(iter(s.values()))["name"] for s in job_container["envFrom"]]
    settings = settings_from_env({**_configmap(docs), **secret_env}, monkeypatch)
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_password is not None and settings.kafka.sasl_password.get_secret_value() == "s3cret"
    assert "s3cret" not in render_chart(renderer, SASL)["configmap.yaml"]
    printed = cli_settings({**_configmap(docs), **secret_env, "L2G_RUNTIME__WORKER_ID": "pod-0"})
    assert printed["kafka"]["sasl_mechanism"] == "SCRAM-SHA-512" and printed["kafka"]["sasl_username"] == "l2g"
    assert "s3cret" not in json.dumps(printed) and "keypass" not in json.dumps(printed), "secrets must be masked"
    keda = render(renderer, {**SASL, "keda": {"enabled": True}})
    (auth,) = by_kind(keda, "TriggerAuthentication")
    assert {ref["key"] for ref in auth["spec"]["secretTargetRef"]} <= set(secret["stringData"])


@pytest.mark.parametrize(("overrides", "message"), [
    ({"env": {"L2G_KAFKA__SECURITY_PROTOCOL": "SASL_SSL"}}, "kafkaAuth.enabled"),
    ({"kafkaAuth": {"enabled": True, "username": "u", "password": "p"}}, "SASL"),
    ({"env": {"L2G_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT", "L2G_KAFKA__SASL_MECHANISM": "PLAIN"},
      "kafkaAuth": {"enabled": True, "username": "u"}}, "password"),
])
def test_invalid_values_fail(renderer: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(RenderError, match=message):
        render_chart(renderer, overrides)


def test_topics_job(renderer: Path) -> None:
    docs = render(renderer)
    (job,) = by_kind(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    values = chart_values()
    specs = {s.split(":")[0]: (int(s.split(":")[1]), s.split(":")[2]) for s in env["TOPICS"].split()}
    expected = {values["env"][f"L2G_TOPICS__{k.upper()}"]: (int(p), values["kafkaTopics"]["retentionMs"][k])
                for k, p in values["kafkaTopics"]["partitions"].items()}
    assert specs == expected
    assert int(env["MAX_MESSAGE_BYTES"]) >= int(values["env"]["L2G_KAFKA__MAX_MESSAGE_BYTES"])


def test_strimzi_topics(renderer: Path) -> None:
    docs = render(renderer, {"kafkaTopics": {"mode": "strimzi"}})
    assert not by_kind(docs, "Job")
    topics = by_kind(docs, "KafkaTopic")
    values = chart_values()
    assert {t["spec"]["topicName"]: t["spec"]["partitions"] for t in topics} == {
        values["env"][f"L2G_TOPICS__{k.upper()}"]: p for k, p in values["kafkaTopics"]["partitions"].items()}
    for topic in topics:
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == values["kafkaTopics"]["strimzi"]["cluster"]


def test_optional_resources(renderer: Path) -> None:
    docs = render(renderer, {"serviceMonitor": {"enabled": True}, "persistence": {"existingClaim": "shared"}})
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    assert not by_kind(docs, "PersistentVolumeClaim")
    deployment, _ = _worker(docs)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["snapshots"]["persistentVolumeClaim"]["claimName"] == "shared"
    (pvc,) = by_kind(render(renderer), "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every worker must see every partition's snapshot"


def test_json_valued_settings(renderer: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides = {"env": {"L2G_INDEX__RETRIEVAL": '{"shortlist": 300}',
                         "L2G_STORAGE__ALLOWED_REF_ROOTS": '["/data/blobs"]',
                         "L2G_KAFKA__CONSUMER_EXTRA": {"fetch_max_bytes": 10485760}}}
    data = _configmap(render(renderer, overrides))
    settings = settings_from_env(data, monkeypatch)
    assert settings.index.retrieval == {"shortlist": 300}
    assert [str(p) for p in settings.storage.allowed_ref_roots] == ["/data/blobs"]
    assert settings.kafka.consumer_extra == {"fetch_max_bytes": 10485760}


# --- monitoring, disruption budget, autoscaling vs load shedding --------------------------------------------


def test_chart_files_match_sources() -> None:
    """The chart can only read files inside itself: its copies must equal the sources."""
    for source, copy in ((ALERTS_FILE, "alerts.yml"), (DASHBOARD_FILE, "l2g-dashboard.json")):
        assert (CHART_DIR / "files" / copy).read_text(encoding="utf-8") == source.read_text(encoding="utf-8"), (
            f"deploy/helm/l2g-stream/files/{copy} is stale: cp {source.relative_to(CHART_DIR.parents[2])} "
            f"deploy/helm/l2g-stream/files/{copy}")


def test_monitoring_resources(renderer: Path) -> None:
    base = "https://git.example.com/l2g/blob/main/deploy/RUNBOOK.md"
    docs = render(renderer, {"serviceMonitor": {"enabled": True},
                             "prometheusRule": {"enabled": True, "labels": {"release": "kps"}, "runbookBaseUrl": base},
                             "grafanaDashboard": {"enabled": True, "folder": "l2g"}})
    (rule,) = by_kind(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    alerts = yaml.safe_load(ALERTS_FILE.read_text(encoding="utf-8"))
    assert [g["name"] for g in rule["spec"]["groups"]] == [g["name"] for g in alerts["groups"]]
    rendered = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    for source in (r for g in alerts["groups"] for r in g["rules"]):
        got = rendered[source["alert"]]
        assert got["expr"] == source["expr"] and got["labels"] == source["labels"]
        assert got["annotations"]["summary"] == source["annotations"]["summary"], "alert templates must survive"
        assert got["annotations"]["runbook_url"] == f"{base}#{source['alert'].lower()}"
    # The alerts select job="l2g-worker": the ServiceMonitor must produce that job.
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (service,) = by_kind(docs, "Service")
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "l2g-worker"
    assert 'job="l2g-worker"' in rendered["L2GWorkerDown"]["expr"]
    (dashboard,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"]["grafana_folder"] == "l2g"
    assert json.loads(dashboard["data"]["l2g-stream.json"]) == json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    kinds = {d["kind"] for d in render(renderer)}
    assert not kinds & {"PrometheusRule", "ServiceMonitor"} and len(by_kind(render(renderer), "ConfigMap")) == 1


def test_pod_disruption_budget(renderer: Path) -> None:
    docs = render(renderer)
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    deployment, _ = _worker(docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    assert not by_kind(render(renderer, {"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget")


def test_keda_scales_before_workers_shed_load(renderer: Path) -> None:
    """KEDA's per-replica lag target must be below the lag at which a worker halves its sampling rate, or
    shedding keeps the lag under the trigger and the system samples less instead of adding workers."""
    lag_high = IngestSettings().lag_high_messages
    assert int(chart_values()["keda"]["lagThreshold"]) < lag_high
    assert int(chart_values()["keda"]["activationLagThreshold"]) <= int(chart_values()["keda"]["lagThreshold"])
    render(renderer, {"keda": {"enabled": True, "lagThreshold": str(lag_high - 1)}})
    with pytest.raises(RenderError, match="LAG_HIGH_MESSAGES"):  # the chart's default is the service's
        render_chart(renderer, {"keda": {"enabled": True, "lagThreshold": str(lag_high)}})
    raised = {"env": {"L2G_INGEST__LAG_HIGH_MESSAGES": "400"}}
    render(renderer, {**raised, "keda": {"enabled": True, "lagThreshold": "200"}})
    with pytest.raises(RenderError, match="LAG_HIGH_MESSAGES"):
        render_chart(renderer, {**raised, "keda": {"enabled": True, "lagThreshold": "400"}})
    render(renderer, {"keda": {"enabled": False, "lagThreshold": "1000"}})  # no ScaledObject, nothing to agree


def test_gpu_selects_the_cuda_image_and_device(renderer: Path) -> None:
    """gpu.enabled: the CUDA image (image.gpuTag, else "<tag>-gpu") and L2G_INDEX__DEVICE=cuda unless env sets it."""
    _, cpu = _worker(render(renderer, {"image": {"tag": "1.2.3"}}))
    assert cpu["image"] == "l2g-stream:1.2.3"
    assert all(e["name"] != "L2G_INDEX__DEVICE" for e in cpu["env"])
    _, gpu = _worker(render(renderer, {"image": {"tag": "1.2.3"}, "gpu": {"enabled": True}}))
    assert gpu["image"] == "l2g-stream:1.2.3-gpu"
    assert {"name": "L2G_INDEX__DEVICE", "value": "cuda"} in gpu["env"]
    _, tagged = _worker(render(renderer, {"image": {"tag": "1.2.3", "gpuTag": "cu12-1.2.3"}, "gpu": {"enabled": True},
                                          "env": {"L2G_INDEX__DEVICE": "auto"}}))
    assert tagged["image"] == "l2g-stream:cu12-1.2.3"
    assert all(e["name"] != "L2G_INDEX__DEVICE" for e in tagged["env"])
