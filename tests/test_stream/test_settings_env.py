"""Settings from the environment: ``L2G_INDEX__RETENTION_SECONDS=null`` switches retention off, as the docs say.

Before, only a settings file could: from the environment the string ``null`` reached the ``float | None`` field and
was refused, although ``docs/limits.md`` and ``deploy/README.md`` document ``null`` as "keeps everything".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.errors import ConfigurationError
from stream.settings import Settings

RETENTION = "L2G_INDEX__RETENTION_SECONDS"


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("L2G_CONFIG_FILE", raising=False)
    monkeypatch.delenv(RETENTION, raising=False)


@pytest.mark.parametrize("value", ["null", "NULL", "Null", "none", "None", " null "])
def test_null_from_the_environment_keeps_everything(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(RETENTION, value)
    assert Settings.load().index.retention_seconds is None
    assert Settings().index.retention_seconds is None


@pytest.mark.parametrize(("value", "expected"), [("120", 120.0), ("0.5", 0.5), ("3600.0", 3600.0)])
def test_numbers_from_the_environment_still_work(monkeypatch: pytest.MonkeyPatch, value: str,
                                                  expected: float) -> None:
    monkeypatch.setenv(RETENTION, value)
    assert Settings.load().index.retention_seconds == expected


@pytest.mark.parametrize("value", ["", "   ", "0", "-5", "forever", "nil", "inf"])
def test_other_values_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """An empty value (a template that rendered nothing) must not silently switch retention off."""
    monkeypatch.setenv(RETENTION, value)
    with pytest.raises(ConfigurationError, match=r"index\.retention_seconds"):
        Settings.load()


def test_unset_keeps_the_default() -> None:
    assert Settings.load().index.retention_seconds == 3600.0


def test_the_environment_overrides_a_file_that_sets_a_number(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("index:\n  retention_seconds: 60\n", encoding="utf-8")
    assert Settings.load(config).index.retention_seconds == 60.0
    monkeypatch.setenv(RETENTION, "null")
    assert Settings.load(config).index.retention_seconds is None


@pytest.mark.parametrize(("name", "text"), [("s.yaml", "index:\n  retention_seconds: null\n"),
                                            ("s.json", '{"index": {"retention_seconds": null}}'),
                                            ("s.toml", '[index]\nretention_seconds = "null"\n')])
def test_a_file_switches_retention_off_too(tmp_path: Path, name: str, text: str) -> None:
    """TOML has no null: the string ``"null"`` does it there."""
    config = tmp_path / name
    config.write_text(text, encoding="utf-8")
    assert Settings.load(config).index.retention_seconds is None


def test_keyword_arguments_accept_none() -> None:
    assert Settings(index={"retention_seconds": None}).index.retention_seconds is None
