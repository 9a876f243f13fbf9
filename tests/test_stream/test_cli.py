"""``l2g-stream`` command line: parsing, settings, clear errors without tracebacks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from stream.cli import _time_arg, build_parser, format_result, main
from stream.messages import Coverage, Match, QueryResult

pytestmark = pytest.mark.timeout(60)


def test_extractors_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["extractors"]) == 0
    out = capsys.readouterr().out
    assert "toy" in out and "xfeat" in out and "presets:" in out


def test_worker_print_settings_applies_file_env_and_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "w.yaml"
    cfg.write_text("ingest:\n  sample_fps: 1.5\nkafka:\n  bootstrap_servers: file:9092\n  sasl_password: hush\n"
                   "  security_protocol: SASL_SSL\n  sasl_mechanism: PLAIN\n  sasl_username: u\n")
    monkeypatch.setenv("L2G_QUERY__K", "7")
    assert main(["worker", "--config", str(cfg), "--bootstrap", "flag:9092", "--extractor", "toy",
                 "--print-settings"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kafka"]["bootstrap_servers"] == "flag:9092"
    assert data["ingest"]["sample_fps"] == 1.5 and data["query"]["k"] == 7
    assert data["extractor"]["name"] == "toy"
    assert data["kafka"]["sasl_password"] == "**********"
    assert data["topics"]["candidates"] == "l2g.candidates"


@pytest.mark.parametrize("argv, message", [
    (["publish", "/nonexistent/video.mp4"], "does not exist"),
    (["query", "/nonexistent.png"], "cannot read"),
    (["worker", "--config", "/nonexistent.yaml", "--print-settings"], "cannot read settings file"),
])
def test_bad_input_exits_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_a_query_image_that_is_not_an_image_is_rejected_before_sending(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"hello")
    assert main(["query", str(bad), "--bootstrap", "127.0.0.1:1"]) == 2
    assert "neither JPEG nor PNG" in capsys.readouterr().err


def test_unreachable_broker_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stream.broker import free_port
    from stream.video import SyntheticCamera, encode_segments

    clip = tmp_path / "clip.ts"
    clip.write_bytes(next(encode_segments(SyntheticCamera(1, 64, 64, world_frames=10).frames(5), 10.0)).data)
    t0 = time.monotonic()
    assert main(["publish", str(clip), "--bootstrap", f"127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert "no Kafka bootstrap server reachable" in err and "Traceback" not in err
    assert time.monotonic() - t0 < 10


def test_argument_errors_are_reported_by_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["query", "x.png", "--k", "0"])
    assert exc.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_time_arguments() -> None:
    assert _time_arg("1700000000.5") == 1_700_000_000.5
    assert _time_arg("2023-11-14T22:13:20") == 1_700_000_000.0
    assert _time_arg("2023-11-14T23:13:20+01:00") == 1_700_000_000.0
    assert abs(_time_arg("now-10m") - (time.time() - 600)) < 2
    assert abs(_time_arg("-90s") - (time.time() - 90)) < 2
    args = build_parser().parse_args(["query", "a.png", "--since", "now-1h", "--camera", "a", "--camera", "b"])
    assert args.camera == ["a", "b"] and args.since < time.time()


def test_format_result_table() -> None:
    res = QueryResult(query_id="q", worker_id="w", status="partial", mode="l2g",
                      matches=[Match(camera_id="cam", frame=3, timestamp=1_700_000_000.0, score=0.5,
                                     stage_scores={"local": 0.4, "l2g": 0.5})],
                      latency_ms={"total": 12.0, "stage1": 3.0},
                      coverage=Coverage(frames_searched=5, frames_total=9, partitions_searched=2, partitions_total=3,
                                        complete=False, notes=["deadline: partitions [2] not searched"]))
    text = format_result(res, expected=("cam", 3))
    assert "cam" in text and "2023-11-14 22:13:20.000 UTC" in text and "<- expected" in text
    assert "INCOMPLETE" in text and "2/3 partitions" in text and "stage1=3.0" in text
    err = QueryResult(query_id="q", worker_id="w", status="error", mode="l2g", error="bad_image: nope")
    assert "ERROR bad_image: nope" in format_result(err)
