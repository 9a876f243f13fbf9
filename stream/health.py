"""Liveness, readiness and ``/metrics`` over one small HTTP server (a daemon thread).

* ``/healthz`` (liveness): 200 while every registered loop has reported progress within ``liveness_timeout_s``;
  503 otherwise (a stuck loop: the kubelet restarts the pod).
* ``/readyz`` (readiness): 200 once every readiness condition is true (extractor loaded, snapshot restored,
  partitions assigned); 503 with the failing conditions otherwise.
* ``/metrics``: the worker's registry in the Prometheus text format.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from stream.metrics import StreamMetrics

__all__ = ["Health", "HealthServer"]

LOG = logging.getLogger(__name__)


class Health:
    """Thread-safe liveness heartbeats and readiness conditions.

    Args:
        liveness_timeout_s: a loop without a heartbeat for this long makes the worker not alive.
        metrics: when given, ``l2g_ready`` follows :meth:`ready`.
    """

    def __init__(self, liveness_timeout_s: float = 120.0, metrics: StreamMetrics | None = None) -> None:
        self.liveness_timeout_s = liveness_timeout_s
        self._metrics = metrics
        self._lock = threading.Lock()
        self._beats: dict[str, float] = {}
        self._conditions: dict[str, bool] = {}

    def beat(self, loop: str) -> None:
        """Record progress of ``loop`` (call at least once per poll)."""
        with self._lock:
            self._beats[loop] = time.monotonic()

    def forget(self, loop: str) -> None:
        """Stop watching ``loop`` (it ended on purpose)."""
        with self._lock:
            self._beats.pop(loop, None)

    def set_condition(self, name: str, ok: bool) -> None:
        """Set one readiness condition."""
        with self._lock:
            self._conditions[name] = ok
            ready = bool(self._conditions) and all(self._conditions.values())
        if self._metrics is not None:
            self._metrics.ready.set(1 if ready else 0)

    def alive(self) -> tuple[bool, dict[str, float]]:
        """``(alive, seconds since each loop's last heartbeat)``."""
        now = time.monotonic()
        with self._lock:
            ages = {name: now - t for name, t in self._beats.items()}
        return all(age <= self.liveness_timeout_s for age in ages.values()), ages

    def ready(self) -> tuple[bool, dict[str, bool]]:
        """``(ready, each condition)``; not ready while no condition is registered."""
        with self._lock:
            conds = dict(self._conditions)
        return bool(conds) and all(conds.values()), conds


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 3.0  # a connection that sends no request within this is closed (no thread held by idle clients)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, ages = self.server.health.alive()
            self._json(200 if ok else 503, {"alive": ok, "seconds_since_progress": ages})
        elif path == "/readyz":
            ok, conds = self.server.health.ready()
            self._json(200 if ok else 503, {"ready": ok, "conditions": conds})
        else:
            self._json(404, {"error": f"no route {path}", "routes": ["/metrics", "/healthz", "/readyz"]})

    def _json(self, code: int, body: dict[str, Any]) -> None:
        self._send(code, json.dumps(body, sort_keys=True).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], health: Health, metrics: StreamMetrics) -> None:
        self.health = health
        self.metrics = metrics
        super().__init__(address, _Handler)


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` in a daemon thread.

    Args:
        health: liveness and readiness state.
        metrics: the registry to expose.
        host, port: listen address; port 0 picks a free port (see :attr:`port` after :meth:`start`).
    """

    def __init__(self, health: Health, metrics: StreamMetrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), health, metrics)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9400``."""
        host = str(self._server.server_address[0])
        return f"http://{host}:{self.port}"

    def start(self) -> HealthServer:
        """Start serving in a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="l2g-http", daemon=True)
        self._thread.start()
        LOG.info("serving /metrics, /healthz and /readyz on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()
