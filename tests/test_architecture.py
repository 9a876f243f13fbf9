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


# ---------------------------------------------------------------------------------------------------- structure
PRODUCT = ("l2g_core", "plugins", "stream")
MAX_MODULE_LINES = 500
L2G_CORE_API = {
    "MAX_K", "MODES", "Candidates", "ConfigError", "Coverage", "FrameFeatures", "FrameKey", "FrameSource", "Hit",
    "IndexConfig",
    "IndexStateError", "IndexStats", "L2GError", "Mode", "PreparedQuery", "Ranking", "RetrievalConfig", "Retriever",
    "RollingIndex", "SearchPlan", "SearchResult", "ShapeError", "SnapshotError", "Stage", "Transport",
    "l2_normalize", "merge_candidates", "prepare_query", "search", "stage1", "stage2",
}


def _product_modules() -> list[Path]:
    return [p for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py")]


def test_the_mode_literal_is_defined_once() -> None:
    needle = '"global", "global_to_local", "local", "l2g"'
    places = [str(p.relative_to(ROOT)) for p in _product_modules() if needle in p.read_text()]
    assert places == ["l2g_core/plan.py"], places


def test_l2g_core_public_api_surface() -> None:
    import l2g_core

    assert set(l2g_core.__all__) == L2G_CORE_API
    for name in l2g_core.__all__:
        assert getattr(l2g_core, name) is not None, name


def test_no_product_module_is_over_the_line_limit() -> None:
    long = {str(p.relative_to(ROOT)): n for p in _product_modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
