"""``l2g-stream`` command line: parsing, settings, clear errors without tracebacks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from stream.cli import build_parser, format_result, main
from stream.cli.args import time_arg as _time_arg
from stream.messages import Coverage, Match, MatchGeometry, QueryResult, Segment

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
    # a stage that did not score a match: a dash, not "nan"
    joined = res.model_copy(update={"matches": [*res.matches, Match(camera_id="cam", frame=4, timestamp=1.7e9,
                                                                      score=0.4, stage_scores={"l2g": 0.4})]})
    row = format_result(joined).splitlines()[4]  # title, header, rule, the first match, this one
    assert row.split()[-4:] == ["0.4000", "0.4000", "-", "-"]  # score, l2g, local, geometry
    assert "nan" not in format_result(joined)


def test_format_result_shows_geometry_and_segments() -> None:
    proof = MatchGeometry(status="verified", model="homography", inliers=23, correspondences=30,
                          transform=[[1, 0, 10], [0, 1, 20], [0, 0, 1]],
                          polygon=[(10, 20), (110, 20), (110, 70), (10, 70)], box=(10, 20, 110, 70),
                          frame_size=(640, 360))
    none = MatchGeometry(status="no_geometry", inliers=3, correspondences=5, reason="too few correspondences")
    res = QueryResult(query_id="q", worker_id="w", status="complete", mode="l2g",
                      matches=[Match(camera_id="cam", frame=3, timestamp=1_700_000_000.0, score=0.5, geometry=proof),
                               Match(camera_id="cam", frame=4, timestamp=1_700_000_001.0, score=0.4, geometry=none),
                               Match(camera_id="cam", frame=9, timestamp=1_700_000_090.0, score=0.3)],
                      segments=[Segment(camera_id="cam", start=1_700_000_000.0, end=1_700_000_001.0, best_frame=3,
                                        best_timestamp=1_700_000_000.0, score=0.5, frame_count=2,
                                        match_indices=[0, 1]),
                                Segment(camera_id="cam", start=1_700_000_090.0, end=1_700_000_090.0, best_frame=9,
                                        best_timestamp=1_700_000_090.0, score=0.3, frame_count=1,
                                        match_indices=[2])],
                      latency_ms={"total": 12.0, "verify": 2.5})
    text = format_result(res)
    assert "23 inl [10,20,110,70]" in text and "none (3 inliers)" in text
    assert "segments" in text and "(1.0 s)  2 matches, best #1 frame 3 score 0.5000" in text
    assert "1 match, best #3 frame 9" in text and "verify=2.5" in text


def test_version_and_help_show_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("l2g-stream ")
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[attr-defined]
    query_help = " ".join(sub["query"].format_help().split())
    assert "(default: query.k, 10)" in query_help and "(default: query.mode, l2g)" in query_help
    assert "(default: query.default_timeout_s, 5.0)" in query_help
    assert "(default: 2.0)" in " ".join(sub["publish"].format_help().split())
    for action in sub["worker"]._actions:
        assert action.help, f"worker {action.option_strings} has no help"


def test_extractors_json_reports_the_sizes_of_an_instance(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["extractors", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in data["extractors"]}
    assert (rows["xfeat"]["local_dim"], rows["xfeat"]["global_dim"], rows["xfeat"]["status"]) == (64, 64, "ok")
    assert rows["efficientnet-gem"]["global_dim"] == 1280
    assert rows["aliked"]["status"].startswith("needs options") and "weights" in rows["aliked"]["status"]
    assert "max_keypoints" in rows["xfeat"]["options"]
    presets = {p["name"]: p for p in data["presets"]}
    assert presets["xfeat-effnet"]["global_dim"] == 1280


@pytest.mark.parametrize("env, message", [
    (("L2G_INDEX__RETRIEVAL", '{"shortlst": 300}'), "index.retrieval: unknown key 'shortlst' (did you mean "
                                                    "'shortlist'?)"),
    (("L2G_INDEX__RETRIEVAL", '{"shortlist": -1}'), "invalid index.retrieval"),
    (("L2G_EXTRACTOR__OPTIONS", '{"max_keypoint": 10}'), "unknown key 'max_keypoint' (did you mean 'max_keypoints'"),
    (("L2G_EXTRACTOR__OPTIONS", '{"max_keypoints": 0}'), "extractor.options"),
    (("L2G_EXTRACTOR__NAME", "nope"), "no extractor named 'nope'"),
    (("L2G_KAFKA__CONSUMER_EXTRA", '{"fetch_max_byte": 1}'), "kafka.consumer_extra: unknown key 'fetch_max_byte'"),
])
def test_print_settings_rejects_typos_in_the_free_form_maps(env: tuple[str, str], message: str,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(*env)
    assert main(["worker", "--print-settings"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_publish_a_folder_goes_on_after_a_bad_file_and_says_what_was_sent(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import stream.cli.publish
    import stream.client
    from stream.testing import MemoryBroker, MemorySink
    from stream.video import SyntheticCamera, encode_segments

    broker = MemoryBroker()
    monkeypatch.setattr(stream.client, "_sink", lambda settings, client: MemorySink(broker))
    monkeypatch.setattr(stream.cli.publish, "check_reachable", lambda settings: None)
    monkeypatch.setenv("L2G_TOPICS__CREATE", "false")
    (tmp_path / "a-bad.mp4").write_bytes(b"\x00" * 64 + bytes(range(256)) * 8)
    (tmp_path / "b-good.ts").write_bytes(
        next(encode_segments(SyntheticCamera(1, 64, 64, world_frames=10).frames(5), 10.0)).data)
    assert main(["publish", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "FAILED a-bad" in captured.out and "sent before the failure: 0 chunks" in captured.out
    assert "published b-good: 1 chunks, 5 frames" in captured.out
    assert "1 of 2 files published, 1 failed" in captured.err and "Errno" not in captured.out
    assert main(["publish", str(tmp_path), "--json", "--stop-on-error"]) == 2
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(reports) == 1 and reports[0]["camera_id"] == "a-bad" and reports[0]["error"]


def test_broker_names_the_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["broker", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and "Errno" not in err


def test_format_result_says_when_nothing_indexed_matches_and_what_merge_wait_is() -> None:
    res = QueryResult(query_id="q", worker_id="w", status="complete", mode="l2g",
                      latency_ms={"stage1": 3.0, "merge_wait": 9.0, "total": 12.0},
                      coverage=Coverage(complete=True))
    text = format_result(res)
    assert "nothing indexed matches the query's cameras" in text
    assert "merge_wait=9.0: reading the query to the last partial (includes" in text


def test_undecodable_bytes_are_explained_without_ffmpeg_codes() -> None:
    from stream.decode import decode_chunk
    from stream.envelope import decode_message
    from stream.errors import SchemaError, VideoDecodeError
    from stream.messages import Query

    with pytest.raises(VideoDecodeError) as video:
        decode_chunk(bytes(range(256)) * 20)
    assert "Errno" not in str(video.value) and "<none>" not in str(video.value)
    with pytest.raises(SchemaError) as schema:
        decode_message(b"\x00{\"kind\": 1}", [], Query)
    assert "utf-16" not in str(schema.value) and schema.value.reason == "invalid_json"


def test_the_example_settings_file_and_the_configuration_page_are_current() -> None:
    import dataclasses

    from l2g_core import RetrievalConfig
    from plugins import available, extractor_class
    from stream.settings import Settings
    from stream.settings_check import check_settings

    root = Path(__file__).resolve().parents[2]
    check_settings(Settings.load(root / "deploy" / "worker.yaml"))
    page = (root / "docs" / "configuration.md").read_text()
    for f in dataclasses.fields(RetrievalConfig):
        assert f"| `{f.name}` |" in page
    for name in available():
        if not extractor_class(name).__module__.startswith("plugins."):
            continue  # a test's own extractor (tests register some at import), not one the project ships
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        for key in extractor_class(name).Options.model_fields:
            assert f"`{key}`" in row, (name, key)
