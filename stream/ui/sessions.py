"""Who may see which query: browser sessions, their queries, and the answers that arrive for them.

Scoping rule: a query is reachable only through the session that submitted it. A session is an unguessable token
(:func:`secrets.token_urlsafe`, 32 bytes = 256 bits) that the browser holds in an ``HttpOnly``, ``SameSite=Strict``
cookie; a query id is another unguessable token (24 bytes = 192 bits), and it is looked up *inside* the caller's
session only. Knowing (or guessing) a query id is therefore not enough: another session gets the same "not found"
as for an id that never existed. Sessions expire after ``ui.session_ttl_s`` of inactivity, and the store is
bounded (sessions, queries per session), so neither memory nor a flood of cookies grows without limit.

Nothing here speaks Kafka or HTTP: the store is filled by :mod:`stream.ui.bridge` and read by
:mod:`stream.ui.server`.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stream.messages import QueryResult

__all__ = ["QueryParams", "SessionStore", "UiQuery", "new_query_id", "new_session_token"]

SESSION_TOKEN_BYTES = 32
QUERY_ID_BYTES = 24


def new_session_token() -> str:
    """A fresh session token: 256 random bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(SESSION_TOKEN_BYTES)


def new_query_id() -> str:
    """A fresh query id: 192 random bits, URL-safe base64 (32 characters); also the query's Kafka key."""
    return secrets.token_urlsafe(QUERY_ID_BYTES)


@dataclass(frozen=True)
class QueryParams:
    """What the page asked besides the image.

    Attributes:
        k: matches wanted (None: the worker's ``query.k``).
        mode: retrieval mode (None: the worker's ``query.mode``).
        cameras: only these cameras (None: every camera).
        time_from, time_to: Unix-time range (None: unbounded).
        timeout_s: the answer budget.
    """

    k: int | None = None
    mode: str | None = None
    cameras: list[str] | None = None
    time_from: float | None = None
    time_to: float | None = None
    timeout_s: float = 5.0


@dataclass
class UiQuery:
    """One query submitted from the page, and its answer once it arrives.

    Attributes:
        query_id: the unguessable id (the Kafka key of the query and its result).
        image: the uploaded image (shown back on the page).
        content_type: ``image/jpeg`` or ``image/png``.
        params: what was asked.
        submitted_at: Unix time it was sent.
        result: the answer (None while waiting).
        frames: encoded frame images fetched back from Kafka, by match position.
    """

    query_id: str
    image: bytes
    content_type: str
    params: QueryParams
    submitted_at: float = field(default_factory=time.time)
    result: QueryResult | None = None
    frames: dict[int, bytes] = field(default_factory=dict)
    answered: threading.Event = field(default_factory=threading.Event)

    @property
    def answer_due(self) -> float:
        """Unix time after which the page stops waiting (the budget plus 5 s for the trip through Kafka)."""
        return self.submitted_at + self.params.timeout_s + 5.0


@dataclass
class _Session:
    token: str
    queries: OrderedDict[str, UiQuery] = field(default_factory=OrderedDict)
    last_seen: float = field(default_factory=time.monotonic)


class SessionStore:
    """Sessions and their queries, thread-safe (the HTTP server answers each request on its own thread).

    Args:
        ttl_s: a session unused this long is forgotten, with its queries.
        max_sessions: the oldest session is dropped beyond this many.
        max_queries: per session; the oldest query is dropped beyond this many.
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, *, ttl_s: float = 3600.0, max_sessions: int = 1000, max_queries: int = 50,
                 clock: Callable[[], float] | None = None) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.max_queries = max_queries
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._owner: dict[str, str] = {}  # query id -> session token (for answers arriving from Kafka)

    def session(self, token: str | None) -> str:
        """``token`` when it names a live session (refreshing it), else a new session's token."""
        with self._lock:
            self._expire()
            if token is not None and token in self._sessions:
                sess = self._sessions[token]
                sess.last_seen = self._clock()
                self._sessions.move_to_end(token)
                return token
            fresh = new_session_token()
            self._sessions[fresh] = _Session(fresh, last_seen=self._clock())
            while len(self._sessions) > self.max_sessions:
                _, old = self._sessions.popitem(last=False)
                self._forget(old)
            return fresh

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` names a live session."""
        with self._lock:
            self._expire()
            return token is not None and token in self._sessions

    def add(self, token: str, query: UiQuery) -> None:
        """Record ``query`` as the session's (before it is sent, so no answer can arrive unclaimed).

        Raises:
            KeyError: no such session.
        """
        with self._lock:
            sess = self._sessions[token]
            sess.queries[query.query_id] = query
            self._owner[query.query_id] = token
            while len(sess.queries) > self.max_queries:
                old_id, _ = sess.queries.popitem(last=False)
                self._owner.pop(old_id, None)

    def discard(self, token: str, query_id: str) -> None:
        """Forget a query of the session (one that could not be sent)."""
        with self._lock:
            sess = self._sessions.get(token)
            if sess is not None and sess.queries.pop(query_id, None) is not None:
                self._owner.pop(query_id, None)

    def get(self, token: str | None, query_id: str) -> UiQuery | None:
        """The session's query ``query_id``; None when the session does not own it (or either is unknown)."""
        with self._lock:
            sess = self._sessions.get(token) if token is not None else None
            return sess.queries.get(query_id) if sess is not None else None

    def queries(self, token: str | None) -> list[UiQuery]:
        """The session's queries, oldest first."""
        with self._lock:
            sess = self._sessions.get(token) if token is not None else None
            return list(sess.queries.values()) if sess is not None else []

    def waiting(self, query_id: str) -> bool:
        """Whether some session waits for ``query_id`` (answers to other ids are not kept)."""
        with self._lock:
            return query_id in self._owner

    def deliver(self, result: QueryResult) -> bool:
        """Store ``result`` with the query it answers and wake its waiters; False when no session owns the id."""
        with self._lock:
            token = self._owner.get(result.query_id)
            sess = self._sessions.get(token) if token is not None else None
            query = sess.queries.get(result.query_id) if sess is not None else None
            if query is None or query.result is not None:
                return False
            query.result = result
        query.answered.set()
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl_s
        while self._sessions:
            token, sess = next(iter(self._sessions.items()))
            if sess.last_seen >= cutoff:
                break
            del self._sessions[token]
            self._forget(sess)

    def _forget(self, sess: _Session) -> None:
        for query_id in sess.queries:
            self._owner.pop(query_id, None)
