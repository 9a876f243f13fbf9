"""What the ``l2g-stream ui`` tests share: the ui as its own process, an HTTP client with a cookie jar, the browser.

The browser is Debian's ``chromium`` driven through its ``chromedriver`` (package ``chromium-driver``) by Selenium
from PyPI; nothing is downloaded at run time (Selenium Manager is never asked: both paths are given). Where either
is missing the browser test skips with kind ``tool`` (a failure under ``CI=true``: ``.ci/run`` installs both).
"""

from __future__ import annotations

import http.cookiejar
import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

from stream.settings import Settings
from tests import _harness

REPO_ROOT = Path(__file__).resolve().parents[2]


class Client:
    """An HTTP client that keeps its cookies (one browser session)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        """``(status, body, headers)``; an HTTP error status is returned, not raised."""
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as resp:
                return resp.status, resp.read(), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), dict(exc.headers)

    def json(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        status, data, _ = self.request(method, path, body, headers)
        return status, json.loads(data)

    def submit(self, image: bytes, query: str = "") -> tuple[int, dict[str, Any]]:
        """``POST /api/queries`` as the page does."""
        return self.json("POST", f"/api/queries?{query}", image, {"X-L2G-UI": "1", "Content-Type": "image/png"})


def write_config(settings: Settings, path: Path) -> Path:
    """``settings`` as a YAML file for ``--config`` (``runtime`` left to the process)."""
    data = settings.as_dict()
    data.pop("runtime")
    path.write_text(yaml.safe_dump(data))
    return path


@contextmanager
def ui_process(config: Path, log: Path) -> Iterator[str]:
    """Run ``l2g-stream ui --config CONFIG --port 0`` and yield its URL (from its first line of output)."""
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "ui", "--config", str(config), "--port", "0"],
                                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err)
        try:
            out: IO[bytes] | None = proc.stdout
            assert out is not None
            line = out.readline().decode()
            if " on http://" not in line:
                proc.wait(10)
                raise AssertionError(f"l2g-stream ui did not start: {line!r}\n{log.read_text()[-3000:]}")
            yield line.split(" on ", 1)[1].split()[0]
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def browser_paths() -> tuple[str, str]:
    """``(chromium, chromedriver)`` or a skip of kind ``tool``."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        _harness.skip(_harness.Kind.TOOL, "Debian's chromium and chromium-driver are not installed "
                                          "(apt-get install chromium chromium-driver; .ci/run does)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _harness.skip(_harness.Kind.TOOL, "selenium is not installed (make setup installs the dev extras)")
    return chromium, driver


@contextmanager
def chromium_driver(width: int = 1400, height: int = 1800) -> Iterator[Any]:
    """A headless Chromium (Selenium WebDriver), UTC time zone, fixed window size, device pixel ratio 1."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1", "--hide-scrollbars"):
        options.add_argument(arg)
    service = Service(driver_path, env={"TZ": "UTC"})
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()
