"""``stream.ui`` without Kafka: sessions and their scoping, upload checks, the page's view of an answer, and the
server over the in-memory broker (answer by server-sent events, a matched frame fetched back as JPEG)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import cv2
import numpy as np
import pytest

from stream.client import QueryClient
from stream.envelope import encode_message
from stream.errors import ImageDecodeError, MessageTooLargeError, SchemaError
from stream.messages import FrameRef, Match, MatchGeometry, QueryResult, Segment
from stream.settings import Settings
from stream.testing import MemoryBroker, MemorySink, MemorySource
from stream.ui.bridge import KafkaBridge
from stream.ui.frames import FrameFetcher
from stream.ui.page import render_page
from stream.ui.server import UiServer
from stream.ui.sessions import QueryParams, SessionStore, UiQuery, new_query_id, new_session_token
from stream.ui.uploads import check_size, parse_params
from stream.ui.view import query_view
from stream.video import SyntheticCamera, chunk_messages, encode_segments
from tests.integration.ui_support import Client

START = 1_700_000_000.0


def _png(width: int = 64, height: int = 48) -> bytes:
    ok, buf = cv2.imencode(".png", np.full((height, width, 3), 120, np.uint8))
    assert ok
    return bytes(buf)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_ids_are_long_random_url_safe_tokens() -> None:
    tokens = {new_session_token() for _ in range(200)} | {new_query_id() for _ in range(200)}
    assert len(tokens) == 400
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32,}", t) for t in tokens)


def test_a_query_is_reachable_only_through_its_own_session() -> None:
    store = SessionStore()
    alice, bob = store.session(None), store.session(None)
    query = UiQuery(new_query_id(), _png(), "image/png", QueryParams())
    store.add(alice, query)
    assert store.get(alice, query.query_id) is query
    assert store.get(bob, query.query_id) is None and store.get(None, query.query_id) is None
    assert store.session(alice) == alice and store.session("forged") not in {alice, bob, "forged"}
    result = QueryResult(query_id=query.query_id, worker_id="w", status="complete", mode="l2g")
    assert store.deliver(result) and query.answered.is_set() and query.result is result
    assert not store.deliver(result)  # answered once
    assert not store.deliver(QueryResult(query_id="someone-else", worker_id="w", status="complete", mode="l2g"))


def test_sessions_expire_and_are_bounded() -> None:
    clock = _Clock()
    store = SessionStore(ttl_s=60.0, max_sessions=2, max_queries=2, clock=clock)
    first = store.session(None)
    queries = [UiQuery(new_query_id(), _png(), "image/png", QueryParams()) for _ in range(3)]
    for q in queries:
        store.add(first, q)
    assert [q.query_id for q in store.queries(first)] == [q.query_id for q in queries[1:]]
    assert not store.waiting(queries[0].query_id) and store.waiting(queries[2].query_id)
    clock.now = 61.0
    assert not store.valid(first) and not store.waiting(queries[2].query_id)
    a, b, c = store.session(None), store.session(None), store.session(None)
    assert not store.valid(a) and store.valid(b) and store.valid(c)


def test_upload_sizes_and_fields_are_checked() -> None:
    assert check_size(100, 1000) == 100
    for declared, error, reason in [(None, SchemaError, "missing_length"), (1001, MessageTooLargeError,
                                    "image_too_large"), (0, ImageDecodeError, "empty_image"),
                                    (5, ImageDecodeError, "image_too_small")]:
        with pytest.raises(error) as info:
            check_size(declared, 1000)
        assert info.value.reason == reason
    params = parse_params({"k": ["3"], "mode": ["local"], "cameras": ["a, b,"], "time_from": ["1"],
                           "time_to": ["2"], "timeout": ["4"]}, default_timeout_s=5.0, max_timeout_s=60.0)
    assert params == QueryParams(k=3, mode="local", cameras=["a", "b"], time_from=1.0, time_to=2.0, timeout_s=4.0)
    assert parse_params({"k": [""], "cameras": [""]}, default_timeout_s=5.0, max_timeout_s=60.0) == QueryParams()
    for bad in [{"k": ["2.5"]}, {"k": ["x"]}, {"mode": ["fast"]}, {"time_from": ["3"], "time_to": ["2"]},
                {"timeout": ["600"]}, {"time_to": ["nan"]}, {"k": ["1", "2"]}]:
        with pytest.raises(SchemaError):
            parse_params(bad, default_timeout_s=5.0, max_timeout_s=60.0)


def test_the_view_orders_stages_and_links_frames_only_where_they_live() -> None:
    geometry = MatchGeometry(status="verified", model="homography", inliers=12, correspondences=20,
                             polygon=[(1, 2), (3, 2), (3, 4), (1, 4)], box=(1, 2, 3, 4), frame_size=(320, 192))
    result = QueryResult(query_id="q", worker_id="w", status="complete", mode="l2g", latency_ms={
        "total": 9.0, "stage1": 2.0, "queue": 1.0, "custom": 0.5}, matches=[
        Match(camera_id="a", frame=1, timestamp=START, score=0.9, geometry=geometry,
              frame_ref=FrameRef(topic="v", partition=0, offset=3, frame_index=1)),
        Match(camera_id="b", frame=2, timestamp=START + 1, score=0.5)],
        segments=[Segment(camera_id="a", start=START, end=START, best_frame=1, best_timestamp=START, score=0.9,
                          frame_count=1, match_indices=[0])])
    query = UiQuery("q", _png(), "image/png", QueryParams(timeout_s=1.0), submitted_at=START, result=result)
    view = query_view(query, now=START + 100)
    assert view["state"] == "answered"
    answer = view["answer"]
    assert [s["stage"] for s in answer["latency"]] == ["queue", "stage1", "total", "custom"]
    assert answer["matches"][0]["frame_url"] == "/api/queries/q/frames/0" and answer["matches"][1]["frame_url"] is None
    assert answer["matches"][0]["geometry"]["polygon"] == [[1, 2], [3, 2], [3, 4], [1, 4]]
    assert answer["segments"][0]["match_ranks"] == [1]
    waiting = UiQuery("w", _png(), "image/png", QueryParams(timeout_s=1.0), submitted_at=START)
    assert query_view(waiting, now=START + 2)["state"] == "waiting"
    assert query_view(waiting, now=START + 7)["state"] == "timed_out"


def test_the_page_config_cannot_close_its_script() -> None:
    page = render_page({"cameras": ["</script><script>alert(1)</script>"]}, "n0nce").decode()
    assert "</script><script>alert" not in page and page.count("</script>") == 1
    assert '<script nonce="n0nce">' in page


@pytest.fixture
def memory_ui() -> Iterator[tuple[UiServer, MemoryBroker, Settings]]:
    settings = Settings(ui={"host": "127.0.0.1", "port": 0}, runtime={"worker_id": "t"})
    broker = MemoryBroker()
    for topic in (settings.topics.video, settings.topics.results, settings.topics.queries,
                  settings.topics.dead_letters):
        broker.create_topic(topic)
    store = SessionStore()
    bridge = KafkaBridge(settings, store, client=QueryClient(settings, source=MemorySource(broker),
                                                             sink=MemorySink(broker)))
    with UiServer(settings, store=store, bridge=bridge,
                  frames=FrameFetcher(settings, source=MemorySource(broker))) as server:
        yield server, broker, settings


def test_the_answer_arrives_by_events_and_its_frame_is_served(
        memory_ui: tuple[UiServer, MemoryBroker, Settings]) -> None:
    server, broker, settings = memory_ui
    cam = SyntheticCamera(4, 160, 96, world_frames=20)
    segments = encode_segments(cam.frames(10), 10.0, segment_seconds=1.0)
    _, msg = next(iter(chunk_messages("gate", segments, start_time=START, max_bytes=900_000, source="t")))
    chunk = broker.append(settings.topics.video, msg.key, msg.value, msg.headers)
    client = Client(server.url)
    client.request("GET", "/")
    status, sent = client.submit(_png(), "k=1")
    assert status == 202
    ref = FrameRef(topic=chunk.topic, partition=chunk.partition, offset=chunk.offset, frame_index=4)
    result = QueryResult(query_id=sent["query_id"], worker_id="w", status="complete", mode="l2g",
                         matches=[Match(camera_id="gate", frame=4, timestamp=START + 0.4, score=1.0, frame_ref=ref)])
    out = encode_message(result, source="w")
    broker.append(settings.topics.results, out.key, out.value, out.headers)
    status, body, headers = client.request("GET", sent["events_url"])
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    events = [block for block in body.decode().split("\n\n") if block.startswith("event:")]
    assert events[-1].startswith("event: answered")
    answered = json.loads(events[-1].split("data: ", 1)[1])
    assert answered["answer"]["matches"][0]["frame_url"] == f"{sent['result_url']}/frames/0"
    status, jpeg, headers = client.request("GET", f"{sent['result_url']}/frames/0")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    assert frame.shape == (96, 160, 3)
    assert np.abs(frame.astype(int) - cam.frame(4)).mean() < np.abs(frame.astype(int) - cam.frame(9)).mean()
    assert client.request("GET", f"{sent['result_url']}/frames/1")[0] == 404
