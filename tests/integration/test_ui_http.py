"""``l2g-stream ui`` over plain HTTP against the real broker: refused uploads (with their dead letters) and the
scoping of queries to the session that submitted them."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.broker import EmbeddedBroker
from stream.messages import DeadLetter, Query
from stream.ui.server import UiServer

from .conftest import kafka_settings, read_topic
from .ui_support import Client

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]

LIMIT = 20_000


def _png(width: int, height: int) -> bytes:
    ramp = np.linspace(0, 255, width * height * 3).astype(np.uint8).reshape(height, width, 3)
    ok, buf = cv2.imencode(".png", ramp)
    assert ok
    return bytes(buf)


def test_refused_uploads_get_a_message_and_a_dead_letter_and_answers_stay_in_their_session(
        kafka_broker: EmbeddedBroker, tmp_path: Path) -> None:
    from stream.kafka import ensure_topics

    settings = kafka_settings(kafka_broker, tmp_path, ui={"host": "127.0.0.1", "port": 0,
                                                          "max_upload_bytes": LIMIT})
    ensure_topics(settings)  # no worker here: the ui never creates topics
    with UiServer(settings) as server:
        alice, mallory = Client(server.url), Client(server.url)
        status, page, headers = alice.request("GET", "/")
        assert status == 200 and b"<title>l2g-stream</title>" in page
        cookie = headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "script-src 'nonce-" in headers["Content-Security-Policy"]
        mallory.request("GET", "/")

        refusals = {
            "unsupported_image": alice.submit(b"GIF89a" + bytes(200)),
            "image_too_large": alice.submit(bytes(LIMIT + 1)),
            "image_too_small": alice.submit(_png(4, 4)),  # a real PNG, under 8 pixels a side
            "empty_image": alice.submit(b""),
            "invalid_field": alice.submit(_png(64, 48), "k=0"),
        }
        for reason, (status, body) in refusals.items():
            assert status == (413 if reason == "image_too_large" else 400), (reason, status, body)
            assert body["reason"] == reason and body["error"], body
        assert "JPEG or PNG" in refusals["unsupported_image"][1]["error"]
        assert f"{LIMIT:,} bytes" in refusals["image_too_large"][1]["error"]
        # no X-L2G-UI header (a cross-site form): refused before anything is read, and not bad input
        status, _, _ = alice.request("POST", "/api/queries", _png(64, 48), {"Content-Type": "image/png"})
        assert status == 403

        status, sent = alice.submit(_png(64, 48), "k=3&mode=local&cameras=gate,door&time_from=10&time_to=20")
        assert status == 202, sent
        query_id = sent["query_id"]
        assert len(query_id) >= 32  # secrets.token_urlsafe(24): 192 random bits
        status, view = alice.json("GET", sent["result_url"])
        assert status == 200 and view["state"] in {"waiting", "timed_out"}
        assert view["asked"]["cameras"] == ["gate", "door"] and view["asked"]["k"] == 3
        assert alice.request("GET", sent["image_url"])[0] == 200
        # another session, or no session, knowing the id gets what an unknown id gets
        for client in (mallory, Client(server.url)):
            for path in (sent["result_url"], sent["events_url"], sent["image_url"], f"{sent['result_url']}/frames/0"):
                assert client.request("GET", path)[0] == 404, path
        assert alice.request("GET", "/api/queries/" + "A" * 32)[0] == 404

    letters = read_topic(settings, settings.topics.dead_letters, DeadLetter, count=len(refusals))
    assert sorted(d.reason for d in letters) == sorted(refusals)
    assert {d.stage for d in letters} == {"ui"}
    assert {d.original_topic for d in letters} == {settings.topics.queries}
    big = next(d for d in letters if d.reason == "image_too_large")
    assert big.original_size == LIMIT + 1 and big.original_value is None  # refused unread
    gif = next(d for d in letters if d.reason == "unsupported_image")
    assert gif.original_value is not None and gif.original_value.startswith(b"GIF89a")
    queries = read_topic(settings, settings.topics.queries, Query, count=1)
    assert [(q.query_id, q.k, q.mode, q.cameras) for q in queries] == [(query_id, 3, "local", ["gate", "door"])]
