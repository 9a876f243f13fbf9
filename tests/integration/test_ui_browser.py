"""``l2g-stream ui`` end to end in a real headless browser: the real broker, a worker (toy extractor), the ui as its
own process, Debian's chromium driven by Selenium. A refused upload shows its message; a crop of a real H.264 frame
is uploaded through the file input, the answer arrives live, and a screenshot is checked: the matched frame and the
query image are drawn where the page put them, and the outline of the geometric proof is on the frame."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from stream.broker import EmbeddedBroker
from stream.client import publish_segments
from stream.video import SyntheticCamera, encode_segments
from stream.worker import Worker

from .conftest import kafka_settings
from .test_stream_kafka import FPS, START, png, wait_for
from .ui_support import browser_paths, chromium_driver, ui_process, write_config

pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

OUTLINE_BGR = np.array([0x55, 0x2D, 0xFF])  # the page's outline colour, #ff2d55


def _wait(driver: Any, condition: Any, timeout_s: float, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(condition)
    except TimeoutException:
        text = driver.find_element("tag name", "body").text
        raise AssertionError(f"timed out waiting for {what}; page text:\n{text}") from None


def _region(shot: np.ndarray, r: dict[str, float]) -> np.ndarray:
    """The screenshot pixels under the element rectangle ``r`` (device pixel ratio 1)."""
    x0, y0 = round(r["x"]), round(r["y"])
    return shot[y0:y0 + round(r["height"]), x0:x0 + round(r["width"])]


def _difference(region: np.ndarray, expected_rgb: np.ndarray) -> float:
    """Mean absolute difference of ``region`` (BGR) and ``expected_rgb`` scaled to it, in grey levels."""
    h, w = region.shape[:2]
    expected = cv2.cvtColor(cv2.resize(expected_rgb, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2BGR)
    return float(np.abs(region.astype(np.float32) - expected.astype(np.float32)).mean())


def test_the_page_answers_an_uploaded_crop_live_and_draws_the_matched_frame(kafka_broker: EmbeddedBroker,
                                                                            tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser_paths()  # skip (kind tool) before starting anything when there is no browser
    settings = kafka_settings(kafka_broker, tmp_path, ui={"host": "127.0.0.1", "port": 0,
                                                          "cameras": ["lobby", "garage"]})
    cams = {"lobby": SyntheticCamera(1, 320, 192, world_frames=80),
            "garage": SyntheticCamera(2, 320, 192, world_frames=80)}
    target = cams["garage"].frame(30)  # t = START + 3 s
    crop = tmp_path / "crop.png"
    crop.write_bytes(png(target[32:160, 64:256]))
    not_image = tmp_path / "notes.txt"
    not_image.write_text("this is not a picture\n" * 10)
    config = write_config(settings, tmp_path / "ui.yaml")
    with Worker(settings) as worker:
        assert worker.wait_ready(30), worker.health.ready()
        chunks = 0
        for name, cam in cams.items():
            segs = encode_segments(cam.frames(60), FPS, segment_seconds=2.0)
            chunks += publish_segments(settings, name, segs, start_time=START).chunks
        wait_for(lambda: sum(worker.ingest.positions.values()) >= chunks, 60, "ingest")  # type: ignore[union-attr]
        with ui_process(config, tmp_path / "ui.log") as url, chromium_driver() as driver:
            driver.get(url)
            assert driver.title == "l2g-stream"
            # a refused upload: the page says why
            driver.find_element(By.ID, "image").send_keys(str(not_image))
            driver.find_element(By.ID, "submit").click()
            message = _wait(driver, lambda d: d.find_element(By.ID, "message").text, 30, "the refusal")
            assert "JPEG or PNG" in message, message
            # the crop, with cameras, a time range (the browser runs in UTC), k and mode
            driver.find_element(By.ID, "image").send_keys(str(crop))
            driver.find_element(By.ID, "cameras").send_keys("garage, lobby")
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(START - 10))
            until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(START + 60))
            driver.execute_script("document.getElementById('time_from').value = arguments[0];"
                                  "document.getElementById('time_to').value = arguments[1];", stamp, until)
            driver.find_element(By.ID, "k").clear()
            driver.find_element(By.ID, "k").send_keys("3")
            driver.execute_script("document.getElementById('mode').value = 'global_to_local';")
            driver.find_element(By.ID, "submit").click()
            _wait(driver, lambda d: d.find_elements(By.ID, "answer-status"), 60, "the answer")
            assert driver.find_element(By.ID, "message").text == ""  # the refusal is gone
            assert driver.find_element(By.ID, "answer-status").text == "complete"
            rows = driver.find_elements(By.CSS_SELECTOR, "#matches tbody tr")
            assert len(rows) == 3
            assert (rows[0].get_attribute("data-camera"), rows[0].get_attribute("data-frame")) == ("garage", "30")
            segments = driver.find_elements(By.CSS_SELECTOR, "#segments tbody tr")
            assert segments and segments[0].get_attribute("data-camera") == "garage"
            stages = [r.find_elements(By.TAG_NAME, "td")[0].text
                      for r in driver.find_elements(By.CSS_SELECTOR, "#latency tbody tr")]
            assert {"extract", "stage1", "stage2", "total"} <= set(stages), stages
            assert "3/3 partitions" in driver.find_element(By.ID, "coverage").text
            # every matched frame fetched back from Kafka and drawn; the best one with its outline
            _wait(driver, lambda d: d.execute_script(
                "const imgs = [...document.querySelectorAll('img.frame-image')];"
                "return imgs.length === 3 && imgs.every((i) => i.complete && i.naturalWidth > 0)"
                " && document.querySelectorAll('#frames svg polygon').length >= 1;"), 60, "the frames")
            frame_img = driver.find_elements(By.CSS_SELECTOR, "img.frame-image")[0]
            natural = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight];",
                                            frame_img)
            assert natural == [320, 192]
            polygon = driver.find_element(By.CSS_SELECTOR, "#frames figure:first-child polygon")
            points = np.array([[float(v) for v in p.split(",")] for p in polygon.get_attribute("points").split()])
            query_img = driver.find_element(By.ID, "query-image")
            driver.execute_script("window.scrollTo(0, 0);")
            frame_rect, query_rect = frame_img.rect, query_img.rect
            shot_png = driver.get_screenshot_as_png()
            (tmp_path / "ui.png").write_bytes(shot_png)
    shot = cv2.imdecode(np.frombuffer(shot_png, np.uint8), cv2.IMREAD_COLOR)
    assert shot is not None and shot.shape[0] >= 800 and shot.shape[1] >= 1000
    assert float(shot.std()) > 20.0  # not a blank page
    # the outline lies where the crop was cut (x 64..256, y 32..160 of the frame), within a few pixels
    assert np.allclose(points, [[64, 32], [256, 32], [256, 160], [64, 160]], atol=12), points
    # the matched frame is drawn where the page put it: close to the real frame, far from another one
    region = _region(shot, frame_rect)
    assert region.shape[0] > 100 and region.shape[1] > 200
    wrong = cams["lobby"].frame(30)
    assert _difference(region, target) < 25.0 < _difference(region, wrong), \
        (_difference(region, target), _difference(region, wrong))
    outline = np.all(np.abs(region.astype(int) - OUTLINE_BGR) < 40, axis=2)
    assert outline.sum() > 200  # the red outline is drawn over the frame
    # and the query image too
    assert _difference(_region(shot, query_rect), target[32:160, 64:256]) < 25.0
