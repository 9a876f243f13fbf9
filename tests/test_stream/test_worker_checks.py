"""A worker refuses, before anything starts, settings with a typo in a free-form map, and names the HTTP address it
cannot listen on."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from stream.errors import ConfigurationError
from stream.health import Health, HealthServer
from stream.metrics import StreamMetrics
from stream.testing import MemoryBroker, MemoryConnector
from stream.worker import Worker, make_extractor

from .conftest import make_settings

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("groups", "message"), [
    ({"index": {"retrieval": {"shortlst": 300}}}, r"index.retrieval: unknown key 'shortlst' \(did you mean "
                                                  r"'shortlist'\?\)"),
    ({"extractor": {"name": "toy", "options": {"dimm": 8}}}, r"extractor.options of 'toy': unknown key 'dimm'"),
    ({"kafka": {"consumer_extra": {"fetch_max_wait": 5}}}, r"kafka.consumer_extra: unknown key 'fetch_max_wait' "
                                                          r"\(did you mean 'fetch_max_wait_ms'\?\)"),
])
def test_a_typo_in_a_free_form_map_stops_the_worker_before_it_starts(
        tmp_path: Path, groups: dict[str, Any], message: str) -> None:
    broker = MemoryBroker(3)
    worker = Worker(make_settings(tmp_path, **groups), connector=MemoryConnector(broker))
    with pytest.raises(ConfigurationError, match=message):
        worker.start()
    assert not worker.ready and worker.server is None and worker.ingest is None
    worker.stop()


def test_a_worker_given_its_own_extractor_factory_is_not_held_to_the_registry(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, extractor={"name": "toy", "options": {"not_a_toy_option": 1}})
    worker = Worker(settings, connector=MemoryConnector(MemoryBroker(3)),
                    extractor_factory=lambda s: make_extractor(s.with_overrides(extractor={"options": {}})))
    try:
        worker.open()
        assert worker.ingest is not None
    finally:
        worker.stop()


def test_an_http_port_in_use_is_named_with_its_host(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigurationError) as caught:
            HealthServer(Health(), StreamMetrics(), "127.0.0.1", port)
        assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in str(caught.value)
        assert "http.port" in str(caught.value)
        worker = Worker(make_settings(tmp_path, http={"enabled": True, "host": "127.0.0.1", "port": port}),
                        connector=MemoryConnector(MemoryBroker(3)))
        with pytest.raises(ConfigurationError, match=f"127.0.0.1:{port}"):
            worker.open()
        worker.stop()
