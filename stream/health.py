"""Liveness, readiness and ``/metrics`` over one small HTTP server (a single daemon thread serves every connection).

* ``/healthz`` (liveness): 200 while every registered loop has reported progress within ``liveness_timeout_s``;
  503 otherwise (a stuck loop: the kubelet restarts the pod).
* ``/readyz`` (readiness): 200 once every readiness condition is true (extractor loaded, snapshot restored,
  partitions assigned); 503 with the failing conditions otherwise.
* ``/metrics``: the worker's registry in the Prometheus text format.

Untrusted clients cannot hold it: each connection has a whole-request deadline (``http.request_timeout_s``) and
their number is capped (``http.max_connections``); see :class:`HealthServer` and ``docs/security.md``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import selectors
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, cast

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from stream.errors import ConfigurationError
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
    """Answers one request whose head the event loop has read in full: it reads the head from memory and writes the
    response to memory (``request`` is ``(head, out)``), so no thread ever waits on a client here."""

    server: _Server

    def setup(self) -> None:
        head, out = self.request
        self.rfile = io.BytesIO(head)
        self.wfile = out

    def finish(self) -> None:
        """Keep ``wfile`` open: the event loop sends its content."""

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


#: Largest request head (request line and headers) read; a longer one is answered ``431`` and closed.
MAX_REQUEST_HEAD_BYTES = 65_536
_READING, _WRITING, _DRAINING = 0, 1, 2


def _canned(code: int, reason: str, error: str) -> bytes:
    """A complete ``HTTP/1.0`` response with a JSON body, for answers the event loop gives itself."""
    body = json.dumps({"error": error}).encode()
    return (f"HTTP/1.0 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n").encode() + body


class _Conn:
    """One client connection of the event loop: what it sent so far, the response, and its deadline."""

    __slots__ = ("addr", "deadline", "inbuf", "outbuf", "sent", "sock", "state")

    def __init__(self, sock: socket.socket, addr: Any, deadline: float) -> None:
        self.sock, self.addr, self.deadline = sock, addr, deadline
        self.inbuf = bytearray()
        self.outbuf = b""
        self.sent = 0
        self.state = _READING


class _Server(socketserver.TCPServer):
    """One thread serves every connection with non-blocking sockets (a ``selectors`` loop).

    Each connection must send its request head within ``request_timeout_s`` of being accepted, and the response
    must be sent and the connection closed within the same deadline; a connection past it is closed (``408`` when
    the head was incomplete). At most ``max_connections`` are open: a new one replaces the oldest that is still
    sending its head, or is closed at once when every open one is being answered.
    """

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], health: Health, metrics: StreamMetrics, *,
                 request_timeout_s: float, max_connections: int) -> None:
        self.health = health
        self.metrics = metrics
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self._conns: dict[int, _Conn] = {}
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        super().__init__(address, _Handler)
        self.socket.setblocking(False)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Serve until :meth:`shutdown` (checked at least every ``poll_interval`` seconds)."""
        self._stop.clear()
        self._stopped.clear()
        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                wait = min([poll_interval] + [c.deadline - now for c in self._conns.values()])
                for key, _ in sel.select(max(0.0, wait)):
                    conn = key.data
                    if conn is None:
                        self._accept(sel)
                    elif conn.sock.fileno() >= 0:  # (not closed earlier in this round)
                        try:
                            if conn.state == _WRITING:
                                self._write(sel, conn)
                            else:
                                self._read(sel, conn)
                        except Exception:  # a bug must cost one connection, never the endpoint (liveness)
                            LOG.exception("http: serving %s failed", conn.addr)
                            self._close(sel, conn)
                now = time.monotonic()
                for conn in [c for c in self._conns.values() if c.deadline <= now]:
                    if conn.state == _READING:
                        self._send_once(conn, _canned(408, "Request Timeout", "request not complete within "
                                                      f"{self.request_timeout_s:g} s"))
                    self._close(sel, conn)
        finally:
            for conn in list(self._conns.values()):
                self._close(sel, conn)
            sel.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait for it to return."""
        self._stop.set()
        self._stopped.wait(10)

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(64):
            try:
                sock, addr = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as exc:  # e.g. out of file descriptors: the listener stays readable, try again later
                LOG.warning("http: accept failed: %s", exc)
                return
            if len(self._conns) >= self.max_connections:
                reading = [c for c in self._conns.values() if c.state == _READING]
                if not reading:
                    sock.close()
                    continue
                self._close(sel, min(reading, key=lambda c: c.deadline))
            sock.setblocking(False)
            conn = _Conn(sock, addr, time.monotonic() + self.request_timeout_s)
            self._conns[sock.fileno()] = conn
            sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(16_384)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client is gone (or reset the connection)
            self._close(sel, conn)
            return
        if conn.state == _DRAINING:  # whatever follows the request (a body) is read and dropped, up to a bound
            conn.sent += len(data)
            if conn.sent > MAX_REQUEST_HEAD_BYTES:
                self._close(sel, conn)
            return
        searched = max(0, len(conn.inbuf) - 3)
        conn.inbuf += data
        ends = [i + n for i, n in ((conn.inbuf.find(b"\r\n\r\n", searched), 4),
                                   (conn.inbuf.find(b"\n\n", searched), 2)) if i >= 0]
        if ends and min(ends) <= MAX_REQUEST_HEAD_BYTES:
            conn.outbuf = self._respond(bytes(conn.inbuf[:min(ends)]), conn.addr)
        elif len(conn.inbuf) > MAX_REQUEST_HEAD_BYTES:
            conn.outbuf = _canned(431, "Request Header Fields Too Large",
                                  f"request head over {MAX_REQUEST_HEAD_BYTES} bytes")
        else:
            return
        conn.inbuf = bytearray()
        conn.state = _WRITING
        sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(sel, conn)

    def _respond(self, head: bytes, addr: Any) -> bytes:
        out = io.BytesIO()
        try:
            _Handler(cast(Any, (head, out)), addr, self)  # an in-memory request: see _Handler.setup
        except Exception:  # a bug in a route must not end the loop
            LOG.exception("http: request handler failed")
            return _canned(500, "Internal Server Error", "internal error")
        return out.getvalue() or _canned(400, "Bad Request", "no request")

    def _write(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            conn.sent += conn.sock.send(memoryview(conn.outbuf)[conn.sent:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(sel, conn)
            return
        if conn.sent < len(conn.outbuf):
            return
        # everything sent: half-close and read what the client still sends until it closes (closing with unread
        # data would reset the connection and could discard the response at the client)
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(sel, conn)
            return
        conn.state, conn.sent = _DRAINING, 0
        sel.modify(conn.sock, selectors.EVENT_READ, conn)

    @staticmethod
    def _send_once(conn: _Conn, data: bytes) -> None:
        with contextlib.suppress(OSError):  # best effort: the connection is closed right after
            conn.sock.send(data)

    def _close(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        if conn.sock.fileno() < 0:  # closed already (evicted earlier in the same round of events)
            return
        self._conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn.sock)
        conn.sock.close()


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` from one daemon thread, whatever the clients do.

    Every connection is accepted by that thread's event loop and must complete within ``request_timeout_s`` (request
    head read, response sent), so a client that trickles its request (slowloris) is closed at the deadline and holds
    no thread meanwhile; at most ``max_connections`` are open (see :class:`_Server`).

    Args:
        health: liveness and readiness state.
        metrics: the registry to expose.
        host, port: listen address; port 0 picks a free port (see :attr:`port` after :meth:`start`).
        request_timeout_s: whole-request deadline per connection (``http.request_timeout_s``).
        max_connections: connections open at once (``http.max_connections``).

    Raises:
        ConfigurationError: the address cannot be bound (the port in use, a host not on this machine); the message
            names ``host:port``.
    """

    def __init__(self, health: Health, metrics: StreamMetrics, host: str = "127.0.0.1", port: int = 0, *,
                 request_timeout_s: float = 5.0, max_connections: int = 128) -> None:
        if request_timeout_s <= 0 or max_connections < 1:
            raise ValueError("request_timeout_s must be positive and max_connections at least 1")
        try:
            self._server = _Server((host, port), health, metrics, request_timeout_s=request_timeout_s,
                                   max_connections=max_connections)
        except OSError as exc:  # e.g. [Errno 98] Address already in use, which names neither host nor port
            why = "the port is already in use (another worker on this host?)" if exc.errno == errno.EADDRINUSE \
                else (exc.strerror or str(exc))
            raise ConfigurationError(f"http: cannot listen on {host}:{port}: {why}; set http.port "
                                     "(L2G_HTTP__PORT, --http-port) to a free port, 0 for any free one, or "
                                     "http.enabled=false") from exc
        self._thread: threading.Thread | None = None

    @property
    def request_timeout_s(self) -> float:
        """Whole-request deadline per connection, in seconds."""
        return self._server.request_timeout_s

    @property
    def max_connections(self) -> int:
        """Connections open at once."""
        return self._server.max_connections

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
