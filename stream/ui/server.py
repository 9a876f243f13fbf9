"""The HTTP side of ``l2g-stream ui``: routes, the session cookie, uploads, the live answer stream.

Routes (every ``/api/queries/<id>...`` route answers only the session that submitted ``<id>``; any other caller
gets the same 404 as for an id that does not exist)::

    GET  /                               the page (sets the session cookie)
    POST /api/queries?k=&mode=&cameras=&time_from=&time_to=&timeout=   body: the image; 202 with the query's URLs
    GET  /api/queries/<id>               the query and its answer as JSON (state waiting|answered|timed_out)
    GET  /api/queries/<id>/events        server-sent events: ``waiting`` (twice a second), then ``answered`` or
                                         ``timed_out`` with the same JSON, then the stream ends
    GET  /api/queries/<id>/image         the uploaded image
    GET  /api/queries/<id>/frames/<n>    match n's frame as JPEG, fetched back from Kafka
    GET  /healthz                        200 while answers can be read, else 503

``POST /api/queries`` also needs the header ``X-L2G-UI: 1``: a cross-site form cannot set it, and a cross-site
script cannot send it without a CORS preflight this server never grants (the cookie is ``SameSite=Strict`` too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import threading
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from l2g_core import MODES
from stream.errors import BadInputError, BrokerError, MessageTooLargeError, StreamError
from stream.ui.page import render_page
from stream.ui.uploads import check_image, check_size, parse_params
from stream.ui.view import query_view

if TYPE_CHECKING:
    from stream.settings import Settings
    from stream.ui.bridge import KafkaBridge
    from stream.ui.frames import FrameFetcher
    from stream.ui.sessions import SessionStore, UiQuery

__all__ = ["COOKIE", "UiServer"]

LOG = logging.getLogger(__name__)
COOKIE = "l2g_session"
REQUEST_TIMEOUT_S = 30.0
DRAIN_LIMIT = 64 * 2**20
"""An upload refused for its size is still read (and dropped) up to this many bytes, so the page gets the answer."""
_QUERY_PATH = re.compile(r"^/api/queries/([A-Za-z0-9_-]{1,64})(/events|/image|/frames/(\d{1,4}))?$")
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                     "X-Frame-Options": "DENY", "Cache-Control": "no-store"}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S  # a client that stops sending is dropped, not waited for
    server_version = "l2g-stream-ui"

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s " + format, self.address_string(), *args)

    # ------------------------------------------------------------------------------------------------ plumbing
    def _token(self) -> str | None:
        try:
            morsel = SimpleCookie(self.headers.get("Cookie", "")).get(COOKIE)
        except CookieError:
            return None
        return morsel.value if morsel is not None else None

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**_SECURITY_HEADERS, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _not_found(self) -> None:
        self._json(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def _internal_error(self) -> None:
        LOG.exception("%s %s failed", self.command, urlsplit(self.path).path)
        self.close_connection = True
        with contextlib.suppress(OSError):  # the headers may be out already, or the browser gone
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error (logged by the ui process)"})

    def _own_query(self, query_id: str) -> UiQuery | None:
        return self.server.app.store.get(self._token(), query_id)

    # ------------------------------------------------------------------------------------------------ routes
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path == "/":
                self._page()
            elif path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            elif path == "/healthz":
                failure = self.server.app.bridge.failure
                self._json(HTTPStatus.SERVICE_UNAVAILABLE if failure else HTTPStatus.OK,
                           {"ok": failure is None, "problem": failure})
            elif (match := _QUERY_PATH.match(path)) is not None:
                self._query_route(match.group(1), match.group(2), match.group(3))
            else:
                self._not_found()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except Exception:
            self._internal_error()

    def _page(self) -> None:
        app = self.server.app
        token = app.store.session(self._token())
        nonce = secrets.token_urlsafe(16)
        cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
        csp = (f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'self' 'unsafe-inline'; "
               "img-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'")
        self._send(HTTPStatus.OK, render_page(app.page_config(), nonce), "text/html; charset=utf-8",
                   {"Set-Cookie": cookie, "Content-Security-Policy": csp})

    def _query_route(self, query_id: str, tail: str | None, frame: str | None) -> None:
        query = self._own_query(query_id)
        if query is None:
            self._not_found()
        elif tail is None:
            self._json(HTTPStatus.OK, query_view(query))
        elif tail == "/events":
            self._events(query)
        elif tail == "/image":
            self._send(HTTPStatus.OK, query.image, query.content_type)
        else:
            self._frame(query, int(frame or 0))

    def _frame(self, query: UiQuery, index: int) -> None:
        result = query.result
        if result is None or index >= len(result.matches) or result.matches[index].frame_ref is None:
            self._not_found()
            return
        try:
            jpeg = self.server.app.frames.jpeg(query, index)
        except StreamError as exc:
            self._json(HTTPStatus.BAD_GATEWAY, {"error": f"the frame cannot be fetched from Kafka: {exc}"})
            return
        self._send(HTTPStatus.OK, jpeg, "image/jpeg")

    def _events(self, query: UiQuery) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(b"retry: 2000\n\n")
        while True:
            view = query_view(query)
            event = "waiting" if view["state"] == "waiting" else view["state"]
            self.wfile.write(f"event: {event}\ndata: {json.dumps(view)}\n\n".encode())
            self.wfile.flush()
            if event != "waiting":
                return
            query.answered.wait(0.5)

    def do_POST(self) -> None:
        try:
            if urlsplit(self.path).path == "/api/queries":
                self._submit()
            else:
                self.close_connection = True
                self._not_found()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            self._internal_error()

    def _submit(self) -> None:
        app = self.server.app
        token = self._token()
        if self.headers.get("X-L2G-UI") != "1" or not app.store.valid(token):
            self.close_connection = True
            self._json(HTTPStatus.FORBIDDEN, {"error": "no session: reload the page and try again"})
            return
        assert token is not None
        length_text = self.headers.get("Content-Length")
        declared = int(length_text) if length_text and length_text.isdigit() else None
        fields = {"content-type": self.headers.get("Content-Type", ""), "query": urlsplit(self.path).query[:2000]}
        body: bytes | None = None
        try:
            check_size(declared, app.settings.ui.max_upload_bytes)
            assert declared is not None
            body = self.rfile.read(declared)
            if len(body) != declared:
                raise BadInputError(f"the upload ended after {len(body)} of {declared} bytes", reason="truncated")
            params = parse_params(parse_qs(urlsplit(self.path).query), max_timeout_s=app.settings.query.max_timeout_s,
                                  default_timeout_s=app.settings.query.default_timeout_s)
            content_type = check_image(body, max_side=app.settings.query.image_max_side,
                                       max_pixels=app.settings.query.max_image_pixels)
            query = app.bridge.submit(token, body, content_type, params)
        except BadInputError as exc:
            if body is None:
                self.close_connection = True  # the body was not kept: this connection cannot carry another request
                self._drain(declared or 0)
            self._refuse(exc, body, declared or 0, fields)
            return
        except BrokerError as exc:
            self._json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"the query could not be sent to Kafka: {exc}"})
            return
        base = f"/api/queries/{query.query_id}"
        self._json(HTTPStatus.ACCEPTED, {"query_id": query.query_id, "result_url": base,
                                         "events_url": f"{base}/events", "image_url": f"{base}/image"})

    def _drain(self, size: int) -> None:
        """Read and drop up to :data:`DRAIN_LIMIT` bytes of an unwanted body, so that the browser, which sends all
        of it before reading the answer, sees the refusal instead of a reset connection."""
        left = min(size, DRAIN_LIMIT)
        while left > 0:
            got = self.rfile.read(min(left, 1 << 16))
            if not got:
                return
            left -= len(got)

    def _refuse(self, error: BadInputError, body: bytes | None, size: int, fields: dict[str, str]) -> None:
        try:
            self.server.app.bridge.refuse(error, body=body, size=size, headers=fields)
        except StreamError as exc:  # the refusal stands; only its dead letter is lost (and logged)
            LOG.error("cannot dead-letter a refused upload (%s): %s", error.reason, exc)
        status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE if isinstance(error, MessageTooLargeError) \
            else HTTPStatus.BAD_REQUEST
        self._json(status, {"error": str(error), "reason": error.reason})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    app: UiServer


class UiServer:
    """``l2g-stream ui``: the page, its sessions, and the Kafka bridge; serves on ``ui.host``/``ui.port``.

    Args:
        settings: the ``ui`` group, topics and query defaults.
        store, bridge, frames: the parts (default: built from ``settings``; the bridge then speaks Kafka).
    """

    def __init__(self, settings: Settings, *, store: SessionStore | None = None, bridge: KafkaBridge | None = None,
                 frames: FrameFetcher | None = None) -> None:
        from stream.ui.sessions import SessionStore

        self.settings = settings
        self.store = store if store is not None else SessionStore(ttl_s=settings.ui.session_ttl_s,
                                           max_queries=settings.ui.max_queries_per_session)
        if bridge is None:
            from stream.ui.bridge import KafkaBridge

            bridge = KafkaBridge(settings, self.store)
        self.bridge = bridge
        if frames is None:
            from stream.ui.frames import FrameFetcher

            frames = FrameFetcher(settings)
        self.frames = frames
        self._httpd = _Server((settings.ui.host, settings.ui.port), _Handler)
        self._httpd.app = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` as bound (the real port when ``ui.port`` is 0)."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def page_config(self) -> dict[str, Any]:
        """What the page's script needs: modes, defaults, cameras offered, the upload limit."""
        q = self.settings.query
        return {"modes": list(MODES), "mode": q.mode, "k": q.k, "timeout_s": q.default_timeout_s,
                "cameras": list(self.settings.ui.cameras), "max_upload_bytes": self.settings.ui.max_upload_bytes}

    def start(self) -> UiServer:
        """Start reading answers and serving (in background threads)."""
        self.bridge.start()
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="l2g-ui-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the Kafka clients."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5.0)
        self._httpd.server_close()
        self.bridge.close()
        self.frames.close()

    def __enter__(self) -> UiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
