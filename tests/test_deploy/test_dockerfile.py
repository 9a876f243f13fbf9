"""The Dockerfile agrees with the project (torch pin, Python version, packages copied), the settings defaults
(port, snapshot directory) and the chart (non-root user)."""

from __future__ import annotations

import re
import tomllib

from stream.settings import HttpSettings
from tests.test_deploy.support import CHART_DIR, DEPLOY, ROOT, chart_values

DOCKERFILE = DEPLOY / "docker" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _args() -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in _instructions() if word == "ARG" and "=" in rest)


def _env_value(env: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", env)
    assert match is not None, f"the image sets no {name}"
    return match.group(1)


def test_torch_and_python_match_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins = dict(dep.split("==", 1) for dep in project["dependencies"] if "==" in dep)
    args = _args()
    assert args["TORCH_VERSION"] == pins["torch"]
    python = re.search(r"python:(\d+\.\d+)", args["PYTHON_IMAGE"])
    assert python is not None
    assert project["requires-python"] == f">={python.group(1)}"
    assert "gpu" in project["optional-dependencies"], "EXTRAS=gpu must name an optional dependency group"


def test_copies_every_package() -> None:
    copied = {rest.split()[0] for word, rest in _instructions() if word == "COPY" and not rest.startswith("--from")}
    for package in ("l2g_core", "plugins", "stream"):
        assert package in copied
    assert any(rest.startswith("pyproject.toml") for word, rest in _instructions() if word == "COPY")


def test_runtime_matches_settings_and_chart() -> None:
    instructions = _instructions()
    env = " ".join(rest for word, rest in instructions if word == "ENV")
    port = int(_env_value(env, "L2G_HTTP__PORT"))
    assert port == HttpSettings().port == int(chart_values()["env"]["L2G_HTTP__PORT"])
    assert ("EXPOSE", str(port)) in instructions
    snapshot_dir = _env_value(env, "L2G_INDEX__SNAPSHOT_DIR")
    assert snapshot_dir == chart_values()["env"]["L2G_INDEX__SNAPSHOT_DIR"]
    assert any(word == "VOLUME" and snapshot_dir in rest for word, rest in instructions)
    user = next(rest for word, rest in instructions if word == "USER")
    security = chart_values()["podSecurityContext"]
    assert user == f"{security['runAsUser']}:{security['runAsGroup']}"
    healthcheck = next(rest for word, rest in instructions if word == "HEALTHCHECK")
    assert "/healthz" in healthcheck and "L2G_HTTP__PORT" in healthcheck
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    assert ("ENTRYPOINT", '["l2g-stream"]') in instructions
    assert (CHART_DIR / "values.yaml").is_file()
