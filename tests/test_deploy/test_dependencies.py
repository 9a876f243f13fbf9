"""Dependencies: ranges in ``pyproject.toml`` (the library installs into other environments), exact versions in
``constraints.txt`` (what `make setup`, CI and the image install), torch exact in both (a range resolves to the
multi-GB CUDA build)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.test_deploy.support import DEPLOY, ROOT

EXACT = {"torch"}


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    deps = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        deps += extra
    return [Requirement(d) for d in deps]


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and re.fullmatch(r"[\w.+-]+", version), f"constraints.txt: {line!r} is not an exact pin"
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt pins {name} twice"
        pins[key] = version
    return pins


def test_pyproject_gives_ranges() -> None:
    for req in _requirements():
        specs = list(req.specifier)
        if canonicalize_name(req.name) in EXACT:
            assert [s.operator for s in specs] == ["=="], f"{req}: torch must stay exact (CPU wheel)"
            continue
        assert all(s.operator not in {"==", "==="} for s in specs), f"{req}: give a range, pin in constraints.txt"
        assert any(s.operator == "<" for s in specs), f"{req}: bound the next major (or minor for 0.x) release"
        assert any(s.operator == ">=" for s in specs), f"{req}: a lower bound (the tested series)"


def test_constraints_pin_every_dependency_within_its_range() -> None:
    pins = _constraints()
    for req in _requirements():
        key = canonicalize_name(req.name)
        assert key in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(Version(pins[key]), prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[key]}, outside pyproject's {req.specifier}")


def test_venv_matches_constraints() -> None:
    """The environment the tests run in is the pinned one (a stale venv shows here, not as odd failures)."""
    pins = _constraints()
    for req in _requirements():
        key = canonicalize_name(req.name)
        try:
            installed = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            continue  # optional (gpu) dependency not installed
        assert Version(installed).public == Version(pins[key]).public, (
            f"{req.name} {installed} installed, constraints.txt pins {pins[key]}: run make setup")


def test_installers_use_the_constraints() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"pip install .*-c constraints\.txt .*-e '\.\[\$\(FAISS\),dev\]'", makefile)
    assert re.search(r"^FAISS \?= cpu$", makefile, re.M), "make setup installs faiss-cpu unless FAISS=gpu"
    assert "constraints.txt" in makefile.split("STAMP :=", 1)[1].split("\n", 1)[0], "reinstall when pins change"
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert "-c constraints.txt" in dockerfile and re.search(r"COPY [^\n]*constraints\.txt", dockerfile)
    ignore = (DEPLOY / "docker" / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    assert "!constraints.txt" in ignore, "the build context must include constraints.txt"


def test_faiss_builds_are_exclusive_extras() -> None:
    """faiss-cpu and faiss-gpu write the same ``faiss`` module: neither is a hard dependency, each is its own extra
    (``cpu``, ``gpu``), no extra pulls both, and constraints.txt pins the same faiss release for both."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    faiss_names = {"faiss-cpu", "faiss-gpu"}
    hard = {canonicalize_name(Requirement(d).name) for d in project["dependencies"]}
    assert not hard & faiss_names and not any(n.startswith("faiss") for n in hard)
    extras = {name: {canonicalize_name(Requirement(d).name) for d in deps}
              for name, deps in project["optional-dependencies"].items()}
    assert {n for n in extras["cpu"] if n.startswith("faiss")} == {"faiss-cpu"}
    assert {n for n in extras["gpu"] if n.startswith("faiss")} == {"faiss-gpu"}
    for name, deps in extras.items():
        assert len({n for n in deps if n.startswith("faiss")}) <= 1, f"extra {name!r} installs two faiss builds"
    pins = _constraints()
    assert Version(pins["faiss-cpu"]).release[:2] == Version(pins["faiss-gpu"]).release[:2]
    dockerfile = (DEPLOY / "docker" / "Dockerfile").read_text(encoding="utf-8")
    assert '".[${EXTRAS}]"' in dockerfile and "ARG EXTRAS=cpu" in dockerfile and '".[gpu]"' in dockerfile
