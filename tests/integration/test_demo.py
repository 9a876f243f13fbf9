"""``l2g-stream demo`` (the README's main command) end to end: its own tansu broker, H.264 video, a worker, a query.

Run with the weight-free ``toy`` extractor and synthetic cameras only (no ../shared needed). The crop it asks is cut
from one sampled frame of a slow pan, so the neighbouring sampled frames show most of it too and may outscore it by
a hair (seen: 0.3126 against 0.3148): the top match must be on the right camera within 1.5 s of the crop's frame,
and that frame must be in the table; the latency breakdown and the /metrics excerpt must be printed.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import pytest

from stream.cli import main
from stream.demo import _verdict
from stream.messages import Match

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(300)]


def test_demo_finds_the_crop_and_prints_results_and_metrics(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.png"
    rc = main(["demo", "--extractor", "toy", "--no-clip", "--cameras", "2", "--seconds", "6", "--sheet", str(sheet)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "NOTE: no real clip" in out, out
    assert f"contact sheet of the answer (query, matched frames fetched back from Kafka, outlines): {sheet}" in out
    picture = cv2.imread(str(sheet))
    assert picture is not None and picture.shape[1] > 600 and picture.shape[0] > 300
    assert re.search(r"^ 1  synthetic-1 ", out, re.MULTILINE), out
    assert "<- expected" in out, out
    verdict = re.search(r"^top match (IS the frame|is the right camera, ([\d.]+) s)", out, re.MULTILINE)
    assert verdict is not None, out
    assert verdict.group(2) is None or float(verdict.group(2)) <= 1.5, out
    latency = re.search(r"^latency ms: (.*)$", out, re.MULTILINE)
    assert latency is not None, out
    assert {"stage1", "stage2", "total"} <= {part.split("=")[0] for part in latency.group(1).split()}
    indexed = re.findall(r'l2g_frames_indexed_total\{camera="synthetic-\d"\} (\d+)\.0', out)
    assert len(indexed) == 2 and all(int(n) > 0 for n in indexed), out
    assert "coverage:" in out and "complete" in out


def _match(camera: str, frame: int, t: float) -> Match:
    return Match(camera_id=camera, frame=frame, timestamp=t, score=0.5)


def test_verdict_says_how_far_the_top_match_is() -> None:
    exact = [_match("c", 7, 10.0), _match("c", 2, 9.5)]
    assert _verdict(exact, "c", 7, 10.0).startswith("top match IS")
    near = [_match("c", 2, 9.0), _match("c", 7, 10.0)]
    assert _verdict(near, "c", 7, 10.0) == ("top match is the right camera, 1.0 s before the frame the crop was "
                                            "cut from; c frame 7 is #2")
    wrong = [_match("d", 7, 10.0)]
    assert "WRONG camera (d)" in _verdict(wrong, "c", 7, 10.0) and "not in the top 1" in _verdict(wrong, "c", 7, 10.0)
    assert _verdict([], "c", 7, 10.0).startswith("no match")
