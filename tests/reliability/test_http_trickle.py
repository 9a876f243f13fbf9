"""Trickling HTTP clients (slowloris) neither live forever nor pin threads, and ``/healthz`` answers meanwhile.

Before: the endpoint was a ``ThreadingHTTPServer`` with a 3 s timeout *per read*, so a client sending one byte every
2 s was never closed and held one thread each (300 such clients pinned 17 threads indefinitely). Now every
connection has a whole-request deadline (``http.request_timeout_s``), one thread serves every connection, and at
most ``http.max_connections`` are open (the oldest unfinished one is dropped for a new one).

Real sockets on 127.0.0.1 only; every loop is bounded and stops by itself. The bounds are generous (the deadline is
seconds, the loops give up after a minute), so a loaded machine cannot make them flake.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from stream.health import Health, HealthServer
from stream.metrics import StreamMetrics
from stream.settings import HttpSettings, Settings
from stream.testing import MemoryBroker, MemoryConnector
from stream.worker import Worker

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CLIENTS = 40
INTERVAL_S = 0.5
GIVE_UP_S = 60.0  # far beyond any deadline used here: only a server that never closes them reaches it
EXTRA_THREADS = 2  # what the server may add to the process while serving (it needs none per connection)
#: a request line and one header that never ends (one byte every INTERVAL_S would take minutes)
PAYLOAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000


def _health() -> Health:
    health = Health(liveness_timeout_s=60)
    health.beat("ingest")
    health.set_condition("extractor_loaded", True)
    return health


@pytest.fixture
def server() -> Iterator[HealthServer]:
    srv = HealthServer(_health(), StreamMetrics(), host="127.0.0.1", port=0).start()
    yield srv
    srv.stop()


def _get(port: int, path: str = "/healthz") -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed (FIN, RST or a ``408`` before closing); False while it still waits."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    with contextlib.suppress(OSError):  # ECONNRESET
        sock.recv(4096)  # b"" (FIN) or the 408 response: the server is done with it
    return True


def _trickle(port: int, clients: int) -> dict[str, Any]:
    """Open ``clients`` connections and send each one byte of :data:`PAYLOAD` every :data:`INTERVAL_S` until the
    server closes them all or :data:`GIVE_UP_S` passes; ask ``/healthz`` after the first round."""
    baseline = threading.active_count()
    socks = {i: socket.create_connection(("127.0.0.1", port), timeout=10) for i in range(clients)}
    t0 = time.monotonic()
    closed: dict[int, float] = {}
    peak = baseline
    health: tuple[int, dict[str, Any]] | None = None
    pos = 0
    try:
        while socks and time.monotonic() - t0 < GIVE_UP_S:
            for i, sock in list(socks.items()):
                done = _closed_by_server(sock)
                if not done:
                    try:
                        sock.send(PAYLOAD[pos:pos + 1])
                    except OSError:  # EPIPE / ECONNRESET: closed by the server
                        done = True
                if done:
                    closed[i] = time.monotonic() - t0
                    sock.close()
                    del socks[i]
            pos += 1
            peak = max(peak, threading.active_count())
            if health is None:  # while (nearly) every trickler is still connected
                health = _get(port)
                peak = max(peak, threading.active_count())
            time.sleep(INTERVAL_S)
    finally:
        for sock in socks.values():
            sock.close()
    return {"closed": closed, "still_open": len(socks), "bytes_sent": pos, "baseline": baseline, "peak": peak,
            "health": health}


def test_trickling_clients_are_closed_and_pin_no_threads(server: HealthServer) -> None:
    out = _trickle(server.port, CLIENTS)
    assert out["still_open"] == 0, f"{out['still_open']} trickling clients still connected after {GIVE_UP_S} s"
    assert len(out["closed"]) == CLIENTS
    assert out["peak"] - out["baseline"] <= EXTRA_THREADS, out
    assert out["health"] is not None
    status, body = out["health"]
    assert status == 200 and body["alive"] is True
    status, _ = _get(server.port)  # and after them
    assert status == 200


def test_more_tricklers_than_connections_still_leave_room_for_probes() -> None:
    """Past ``max_connections`` the oldest unfinished connection is dropped, so a probe always gets in."""
    srv = HealthServer(_health(), StreamMetrics(), host="127.0.0.1", port=0, request_timeout_s=3.0,
                       max_connections=8).start()
    try:
        out = _trickle(srv.port, CLIENTS)
        assert out["still_open"] == 0 and out["peak"] - out["baseline"] <= EXTRA_THREADS, out
        assert out["health"] is not None and out["health"][0] == 200
    finally:
        srv.stop()


def test_a_slow_but_complete_request_within_the_deadline_is_answered() -> None:
    srv = HealthServer(_health(), StreamMetrics(), host="127.0.0.1", port=0, request_timeout_s=30.0).start()
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
            for piece in (b"GET /readyz HT", b"TP/1.1\r\nHost: x\r\n", b"\r\n"):
                sock.sendall(piece)
                time.sleep(0.3)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") and json.loads(body)["ready"] is True
    finally:
        srv.stop()


def test_the_deadline_and_the_connection_cap_are_settings() -> None:
    http = HttpSettings()
    assert http.request_timeout_s == 5.0 and http.max_connections == 128
    settings = Settings(http={"host": "127.0.0.1", "port": 0, "request_timeout_s": 1.0, "max_connections": 4},
                        ingest={"enabled": False}, query={"enabled": False}, extractor={"name": "toy"},
                        topics={"partitions": 1}, runtime={"worker_id": "w", "progress": False})
    worker = Worker(settings, connector=MemoryConnector(MemoryBroker(1))).open()
    try:
        assert worker.server is not None
        assert worker.server.request_timeout_s == 1.0 and worker.server.max_connections == 4
        with socket.create_connection(("127.0.0.1", worker.server.port), timeout=30) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # and nothing more
            t0 = time.monotonic()
            while not _closed_by_server(sock) and time.monotonic() - t0 < GIVE_UP_S:
                time.sleep(0.1)
            assert time.monotonic() - t0 < GIVE_UP_S
    finally:
        worker.stop()
