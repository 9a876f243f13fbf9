"""Import direction: l2g_core imports no Kafka, PyAV or Prometheus; plugins never import stream."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = ("kafka", "av", "prometheus_client", "confluent_kafka", "stream", "plugins")


def _loaded_modules(package: str) -> set[str]:
    code = f"import sys, {package}, pkgutil, importlib\n" \
           f"for m in pkgutil.walk_packages({package}.__path__, '{package}.'): importlib.import_module(m.name)\n" \
           "print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_is_a_pure_algorithm_library() -> None:
    mods = _loaded_modules("l2g_core")
    bad = sorted(m for m in mods if m.split(".")[0] in FORBIDDEN_IN_CORE)
    assert not bad, f"l2g_core pulled in {bad}"
    assert "faiss" in mods and "torch" in mods  # sanity: the walk really imported the package


def test_core_sources_never_name_forbidden_packages() -> None:
    for path in (ROOT / "l2g_core").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                top = stripped.split()[1].split(".")[0]
                assert top not in FORBIDDEN_IN_CORE, f"{path}: {stripped}"


def test_plugins_do_not_import_stream() -> None:
    if not (ROOT / "plugins" / "__init__.py").exists():
        return
    for path in (ROOT / "plugins").rglob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                assert stripped.split()[1].split(".")[0] != "stream", f"{path}: {stripped}"
