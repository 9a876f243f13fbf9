"""Access: TLS/SASL settings reach kafka-python correctly, secrets never leak, the HTTP endpoint exposes 3 routes.

* ``stream.kafka.config.common_config`` maps every security setting to the kafka-python option of the same
  meaning, for consumers, producers and the admin client, and pass-through extras cannot weaken it.
* The mapped TLS options build a context (with kafka-python's own builder) that completes a real TLS handshake
  against a loopback server with a CA we generate, checks the host name, and presents a client certificate whose
  key is password-protected.
* Secrets (SASL password, TLS key password, secret-looking extras) never appear in ``Settings.as_dict()``,
  ``repr``, configuration errors, ``--print-settings`` or logs, even at DEBUG.
* ``stream.health.HealthServer`` binds where told and serves only ``/metrics``, ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.net.sasl.plain import SaslMechanismPlain
from kafka.net.sasl.scram import ScramClient
from kafka.net.transport import KafkaSSLTransport

from stream.broker import free_port
from stream.errors import BrokerError, ConfigurationError
from stream.health import Health, HealthServer
from stream.kafka import consumer as consumer_mod
from stream.kafka import producer as producer_mod
from stream.kafka.config import common_config, merge_extra
from stream.metrics import StreamMetrics
from stream.settings import KafkaSettings, Settings
from tests import _harness

REPO = Path(__file__).resolve().parents[2]
SASL_PW = "s3cr3t-sasl-Pw"
KEY_PW = "k3y-pAssw0rd"
SECRETS = (SASL_PW, KEY_PW)

# ---------------------------------------------------------------------------------------------- mapping


def _kafka(protocol: str, **kw: Any) -> KafkaSettings:
    base: dict[str, Any] = {"bootstrap_servers": "b1:9093, b2:9093", "security_protocol": protocol}
    if protocol.startswith("SASL"):
        base.update(sasl_mechanism="SCRAM-SHA-512", sasl_username="svc-l2g", sasl_password=SASL_PW)
    if protocol.endswith("SSL"):
        base.update(ssl_cafile="/etc/kafka/ca.pem", ssl_certfile="/etc/kafka/client.pem",
                    ssl_keyfile="/etc/kafka/client.key", ssl_password=KEY_PW)
    base.update(kw)
    return KafkaSettings(**base)


def test_plaintext_sends_no_credentials() -> None:
    conf = common_config(_kafka("PLAINTEXT"), "cid")
    assert conf["security_protocol"] == "PLAINTEXT" and conf["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert not {k for k in conf if k.startswith(("sasl", "ssl"))}


def test_ssl_maps_tls_options() -> None:
    conf = common_config(_kafka("SSL"), "cid")
    assert conf["security_protocol"] == "SSL"
    assert conf["ssl_cafile"] == "/etc/kafka/ca.pem" and isinstance(conf["ssl_cafile"], str)
    assert conf["ssl_certfile"] == "/etc/kafka/client.pem" and conf["ssl_keyfile"] == "/etc/kafka/client.key"
    assert conf["ssl_password"] == KEY_PW and conf["ssl_check_hostname"] is True
    assert not {k for k in conf if k.startswith("sasl")}
    assert common_config(_kafka("SSL", ssl_check_hostname=False), "cid")["ssl_check_hostname"] is False


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_maps_credentials(protocol: str, mechanism: str) -> None:
    conf = common_config(_kafka(protocol, sasl_mechanism=mechanism), "cid")
    assert conf["security_protocol"] == protocol and conf["sasl_mechanism"] == mechanism
    assert conf["sasl_plain_username"] == "svc-l2g" and conf["sasl_plain_password"] == SASL_PW
    assert ("ssl_cafile" in conf) == (protocol == "SASL_SSL")
    # the mapped options are what kafka-python's own mechanisms consume
    if mechanism == "PLAIN":
        assert SaslMechanismPlain(**conf).auth_bytes() == f"svc-l2g\0svc-l2g\0{SASL_PW}".encode()
    else:
        client = ScramClient(conf["sasl_plain_username"], conf["sasl_plain_password"], conf["sasl_mechanism"])
        assert client.first_message().startswith(b"n,,n=svc-l2g,r=")


def test_tls_without_files_uses_system_trust_store() -> None:
    conf = common_config(KafkaSettings(security_protocol="SSL"), "cid")
    assert "ssl_cafile" not in conf and conf["ssl_check_hostname"] is True
    ctx = KafkaSSLTransport._build_ssl_context({**KafkaSSLTransport.DEFAULT_CONFIG, **conf})
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    "bad",
    [
        {"security_protocol": "SASL_SSL"},
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"},
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u"},
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": ""},
        {"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": "p"},
        {"security_protocol": "TLS"},
    ],
    ids=["no-mechanism", "no-user", "no-password", "empty-password", "unsupported-mechanism", "unknown-protocol"],
)
def test_incomplete_security_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        Settings.load(kafka=bad)


class _Recorder:
    """Stands in for a kafka-python client class: records the keyword arguments it was built with."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **conf: Any) -> None:
        type(self).calls.append(conf)
        # the cluster metadata whose auto-creation flag stream.kafka.config.forbid_auto_create turns off
        self._cluster = type("Cluster", (), {"config": {"allow_auto_create_topics": True}})()


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"])
def test_clients_receive_only_options_kafka_python_knows(protocol: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What KafkaSource / KafkaSink build is accepted by kafka-python (it rejects unknown options)."""
    _Recorder.calls = []
    monkeypatch.setattr(consumer_mod, "KafkaConsumer", _Recorder)
    monkeypatch.setattr(producer_mod, "KafkaProducer", _Recorder)
    kafka = _kafka(protocol, consumer_extra={"check_crcs": False}, producer_extra={"compression_type": None})
    consumer_mod.KafkaSource(kafka, client_id="c", group_id="g")
    producer_mod.KafkaSink(kafka, client_id="p")
    consumer_conf, producer_conf = _Recorder.calls
    assert not set(consumer_conf) - set(KafkaConsumer.DEFAULT_CONFIG)
    assert not set(producer_conf) - set(KafkaProducer.DEFAULT_CONFIG)
    assert set(common_config(kafka, "a")) <= set(KafkaAdminClient.DEFAULT_CONFIG)
    for conf in (consumer_conf, producer_conf):
        assert conf["security_protocol"] == protocol
        if protocol.startswith("SASL"):
            assert conf["sasl_plain_password"] == SASL_PW
    assert consumer_conf["check_crcs"] is False and consumer_conf["enable_auto_commit"] is False


def test_extras_cannot_downgrade_security(monkeypatch: pytest.MonkeyPatch) -> None:
    _Recorder.calls = []
    monkeypatch.setattr(consumer_mod, "KafkaConsumer", _Recorder)
    downgrade = {"security_protocol": "PLAINTEXT", "ssl_check_hostname": False, "sasl_plain_password": "other",
                 "enable_auto_commit": True, "bootstrap_servers": ["evil:9092"]}
    consumer_mod.KafkaSource(_kafka("SASL_SSL", consumer_extra=downgrade), client_id="c", group_id="g")
    conf = _Recorder.calls[0]
    assert conf["security_protocol"] == "SASL_SSL" and conf["ssl_check_hostname"] is True
    assert conf["sasl_plain_password"] == SASL_PW and conf["enable_auto_commit"] is False
    assert conf["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert merge_extra({"a": 1}, {"a": 2, "b": 3}) == {"a": 1, "b": 3}


# ---------------------------------------------------------------------------------------------- real TLS


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for localhost/127.0.0.1, and a client certificate with an encrypted key."""
    if shutil.which("openssl") is None:
        _harness.skip(_harness.Kind.TOOL, "openssl CLI not available")
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=l2g-test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
             "/CN=localhost", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
             "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-keyout", "client.key", "-passout", f"pass:{KEY_PW}", "-out",
             "client.csr", "-subj", "/CN=l2g-worker", cwd=d)
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
             "client.pem", "-days", "2", cwd=d)
    return d


def _tls_server(pki: Path) -> tuple[int, list[str], threading.Thread]:
    """A one-shot TLS server requiring a client certificate; returns its port and the peer CNs it saw."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    ctx.load_verify_locations(pki / "ca.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(10)
    peers: list[str] = []

    def serve() -> None:
        try:
            conn, _ = sock.accept()
            with ctx.wrap_socket(conn, server_side=True) as tls:
                cert = tls.getpeercert() or {}
                peers.extend(v for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName")
                tls.sendall(b"ok")
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return sock.getsockname()[1], peers, thread


def _handshake(conf: dict[str, Any], port: int, server_hostname: str) -> bytes:
    ctx = KafkaSSLTransport._build_ssl_context({**KafkaSSLTransport.DEFAULT_CONFIG, **conf})
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
        return tls.recv(2)


def test_mapped_tls_options_complete_a_mutual_tls_handshake(pki: Path) -> None:
    kafka = KafkaSettings(security_protocol="SSL", ssl_cafile=pki / "ca.pem", ssl_certfile=pki / "client.pem",
                          ssl_keyfile=pki / "client.key", ssl_password=KEY_PW)
    conf = common_config(kafka, "cid")
    port, peers, thread = _tls_server(pki)
    assert _handshake(conf, port, "localhost") == b"ok"
    thread.join(10)
    assert peers == ["l2g-worker"]  # the client certificate (encrypted key, ssl_password) was presented


def test_host_name_is_checked_unless_disabled(pki: Path) -> None:
    kafka = KafkaSettings(security_protocol="SSL", ssl_cafile=pki / "ca.pem", ssl_certfile=pki / "client.pem",
                          ssl_keyfile=pki / "client.key", ssl_password=KEY_PW)
    port, _, thread = _tls_server(pki)
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(common_config(kafka, "cid"), port, "broker.elsewhere.example")
    thread.join(10)
    relaxed = kafka.model_copy(update={"ssl_check_hostname": False})
    port, _, thread = _tls_server(pki)
    assert _handshake(common_config(relaxed, "cid"), port, "broker.elsewhere.example") == b"ok"
    thread.join(10)


def test_untrusted_server_is_refused(pki: Path, tmp_path: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem", "-days",
             "2", "-subj", "/CN=other-ca", cwd=tmp_path)
    kafka = KafkaSettings(security_protocol="SSL", ssl_cafile=tmp_path / "other.pem", ssl_certfile=pki / "client.pem",
                          ssl_keyfile=pki / "client.key", ssl_password=KEY_PW)
    port, _, thread = _tls_server(pki)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(common_config(kafka, "cid"), port, "localhost")
    thread.join(10)


def test_wrong_key_password_fails_at_context_creation(pki: Path) -> None:
    kafka = KafkaSettings(security_protocol="SSL", ssl_cafile=pki / "ca.pem", ssl_certfile=pki / "client.pem",
                          ssl_keyfile=pki / "client.key", ssl_password="wrong")
    with pytest.raises(ssl.SSLError):
        KafkaSSLTransport._build_ssl_context({**KafkaSSLTransport.DEFAULT_CONFIG, **common_config(kafka, "c")})


# ---------------------------------------------------------------------------------------------- secrets


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("L2G_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("L2G_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("L2G_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("L2G_KAFKA__SASL_PASSWORD", SASL_PW)
    monkeypatch.setenv("L2G_KAFKA__SSL_PASSWORD", KEY_PW)


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def test_secrets_from_the_environment_are_loaded_and_masked(secret_env: None) -> None:
    s = Settings.load()
    assert s.kafka.sasl_password is not None and s.kafka.sasl_password.get_secret_value() == SASL_PW
    conf = common_config(s.kafka, "c")
    assert conf["sasl_plain_password"] == SASL_PW and conf["ssl_password"] == KEY_PW
    views = [json.dumps(s.as_dict()), repr(s), str(s), s.model_dump_json(), repr(s.kafka), repr(conf), str(conf)]
    for view in views:
        assert not _leaks(view), view[:300]
    assert s.as_dict()["kafka"]["sasl_password"] == "**********"


def test_secrets_in_free_form_options_are_masked() -> None:
    s = Settings.load(kafka={"consumer_extra": {"sasl_oauth_token": SASL_PW, "fetch_max_wait_ms": 100}},
                      extractor={"options": {"hf_token": KEY_PW, "nested": {"api_key": SASL_PW}, "tile": 2}})
    out = json.dumps(s.as_dict())
    assert not _leaks(out)
    assert s.as_dict()["kafka"]["consumer_extra"]["fetch_max_wait_ms"] == 100
    assert s.as_dict()["extractor"]["options"]["tile"] == 2


@pytest.mark.parametrize("bad", [{"heartbeat_interval_ms": 9_000}, {"sasl_password": 1234567890},
                                 {"security_protocol": "SASL_SSL"}, {"ssl_password": ["x"]}])
def test_configuration_errors_do_not_echo_secrets(bad: dict[str, Any]) -> None:
    import traceback

    kafka = {"sasl_password": "pw", "ssl_password": KEY_PW, **bad}
    with pytest.raises(ConfigurationError) as info:
        Settings.load(kafka=kafka)
    text = "".join(traceback.format_exception(info.value))
    assert not _leaks(text) and "'pw'" not in text and "1234567890" not in text, text


def test_settings_file_secrets_are_masked(tmp_path: Path) -> None:
    cfg = tmp_path / "l2g.yaml"
    cfg.write_text(f"kafka:\n  security_protocol: SASL_PLAINTEXT\n  sasl_mechanism: PLAIN\n"
                   f"  sasl_username: u\n  sasl_password: {SASL_PW}\n")
    s = Settings.load(cfg)
    assert s.kafka.sasl_password is not None and s.kafka.sasl_password.get_secret_value() == SASL_PW
    assert not _leaks(json.dumps(s.as_dict()))


def test_print_settings_masks_secrets(secret_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from stream import cli

    monkeypatch.setenv("L2G_KAFKA__CONSUMER_EXTRA", json.dumps({"sasl_oauth_token_provider": SASL_PW}))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert cli.main(["worker", "--print-settings"]) == 0
    printed = out.getvalue()
    assert "SCRAM-SHA-256" in printed and not _leaks(printed), printed


def test_clients_and_errors_do_not_log_secrets(secret_env: None, caplog: pytest.LogCaptureFixture) -> None:
    """Building the admin client, a consumer and a producer against a dead port, with every logger at DEBUG."""
    port = free_port()
    s = Settings.load(kafka={"bootstrap_servers": f"127.0.0.1:{port}", "ssl_check_hostname": False,
                             "consumer_extra": {"bootstrap_timeout_ms": 300},
                             "producer_extra": {"bootstrap_timeout_ms": 300}})
    caplog.set_level(logging.DEBUG)
    # The CLI caps the "kafka" logger at WARNING (an earlier test may have run it in this process): lift it here.
    caplog.set_level(logging.DEBUG, logger="kafka")
    errors: list[str] = []
    with pytest.raises(Exception) as info:  # kafka-python's own timeout error
        KafkaAdminClient(**common_config(s.kafka, "admin"), bootstrap_timeout_ms=300)
    errors.append(repr(info.value))
    for build in (lambda: consumer_mod.KafkaSource(s.kafka, client_id="c", group_id="g"),
                  lambda: producer_mod.KafkaSink(s.kafka, client_id="p")):
        with pytest.raises(BrokerError) as binfo:
            build()
        errors.append(str(binfo.value))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "KafkaAdminClient with configuration" in logged  # the DEBUG line that used to print the passwords
    assert not _leaks(logged) and not _leaks("\n".join(errors))


# ---------------------------------------------------------------------------------------------- HTTP


@pytest.fixture
def server() -> Any:
    health = Health(liveness_timeout_s=60)
    health.beat("ingest")
    health.set_condition("extractor_loaded", True)
    srv = HealthServer(health, StreamMetrics(), host="127.0.0.1", port=0).start()
    yield srv
    srv.stop()


def _request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def test_http_binds_the_configured_address(server: HealthServer) -> None:
    assert server._server.server_address[0] == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}"


def test_http_serves_the_three_routes(server: HealthServer) -> None:
    status, body, headers = _request(server.port, "GET", "/metrics")
    assert status == 200 and b"l2g_ready" in body and headers["content-type"].startswith("text/plain")
    status, body, _ = _request(server.port, "GET", "/healthz")
    assert status == 200 and json.loads(body)["alive"] is True
    status, body, _ = _request(server.port, "GET", "/readyz?verbose=1")
    assert status == 200 and json.loads(body)["ready"] is True


# (http.server collapses a leading "//" to "/", so "//metrics" is /metrics: same content, no leak)
@pytest.mark.parametrize("path", ["/", "/index.html", "/metrics/", "/metricsx", "/healthz/../metrics",
                                  "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/stream/", "/.git/config",
                                  "/readyz/extra", "http://127.0.0.1/metrics", "*", "/" + "a" * 8000])
def test_http_everything_else_is_404_without_listing(server: HealthServer, path: str) -> None:
    status, body, headers = _request(server.port, "GET", path)
    assert status == 404
    assert headers["content-type"] == "application/json"
    payload = json.loads(body)
    assert payload["routes"] == ["/metrics", "/healthz", "/readyz"]
    assert b"root:" not in body and b"<a href" not in body and b"[core]" not in body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "HEAD", "CONNECT"])
@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/"])
def test_http_other_methods_are_refused(server: HealthServer, method: str, path: str) -> None:
    status, body, _ = _request(server.port, method, path, body=b"x" * 10 if method in ("POST", "PUT") else None)
    assert status in (405, 501)
    assert b"l2g_" not in body  # no metrics through another verb


@pytest.mark.slow  # waits out the idle timeout
def test_http_survives_garbage_and_idle_connections(server: HealthServer) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(20)]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n")  # a TLS hello
        s.recv(1024)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"y" * 70_000 + b"\r\n\r\n")
        s.recv(1024)
    status, _, _ = _request(server.port, "GET", "/healthz")  # still answers while 20 idle connections are open
    assert status == 200
    for s in idle:
        s.close()


@pytest.mark.slow  # waits out the idle timeout
def test_http_closes_idle_connections(server: HealthServer) -> None:
    """A client that connects and sends nothing does not hold a server thread for long (slowloris)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        t0 = time.monotonic()
        try:
            data = s.recv(1)  # the server closes (b"") or answers 408 within its timeout
        except TimeoutError:
            data = None
        assert data is not None and time.monotonic() - t0 < 10


def test_default_http_host_is_all_interfaces() -> None:
    """Documented in docs/security.md: the default binds 0.0.0.0 (a pod's probes and Prometheus need it)."""
    assert Settings.load().http.host == "0.0.0.0"
    assert Settings.load(http={"host": "127.0.0.1"}).http.host == "127.0.0.1"
