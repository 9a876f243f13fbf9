"""``deploy/README.md`` documents every setting (the generated tables are up to date) and every ``L2G_*`` name
used anywhere in ``deploy/`` is a real setting (or one of the few compose-level knobs)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.test_deploy.support import DEPLOY, EXTRA_ENV_NAMES, load_module, settings_env_names

# Variables of the compose file itself (interpolated by docker compose, never read by a worker).
COMPOSE_KNOBS = {"L2G_WORKERS", "L2G_IMAGE", "L2G_THREADS", "L2G_GPU_WORKERS", "L2G_GPU_IMAGE"}
_NAME = re.compile(r"\bL2G_[A-Z0-9_]*[A-Z0-9]\b")


@pytest.fixture(scope="module")
def gen() -> Any:
    return load_module(DEPLOY / "gen_env_docs.py", "l2g_gen_env_docs")


def test_readme_tables_are_generated(gen: Any) -> None:
    text = gen.README.read_text(encoding="utf-8")
    assert text == gen.update_readme(text), "stale tables: run .venv/bin/python deploy/gen_env_docs.py --write"
    assert gen.main(["--check"]) == 0


def test_every_setting_is_documented(gen: Any) -> None:
    section = gen.README.read_text(encoding="utf-8").split(gen.BEGIN, 1)[1].split(gen.END, 1)[0]
    documented = set(re.findall(r"^\| `(L2G_[A-Z0-9_]+)` \|", section, re.M))
    assert documented == set(settings_env_names())
    for group, _, rows in gen.env_rows():
        for variable, _, default, description in rows:
            assert description, f"{variable} has no description: document it in the Attributes of {group}"
            assert default


def test_attribute_docs_parser(gen: Any) -> None:
    from pydantic import BaseModel

    class Example(BaseModel):
        """Summary.

        Attributes:
            a, b: shared text
                continued here.
            c: uses ``code`` and :class:`~pkg.mod.Thing`.

        Raises:
            nothing: really.
        """

        a: int = 1
        b: int = 2
        c: int = 3

    docs = gen.attribute_docs(Example)
    assert docs == {"a": "shared text continued here.", "b": "shared text continued here.",
                    "c": "uses `code` and `Thing`."}


def test_every_name_in_deploy_is_a_setting() -> None:
    valid = settings_env_names() | EXTRA_ENV_NAMES | COMPOSE_KNOBS
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file() or path.suffix not in {".md", ".yml", ".yaml", ".tpl", ".txt", ".py", ""}:
            continue
        text = path.read_text(encoding="utf-8")
        # Template prefixes such as printf "L2G_TOPICS__%s" end in "__" and are not names.
        unknown = sorted({n for n in _NAME.findall(text) if n not in valid})
        assert not unknown, f"{path.relative_to(DEPLOY)} names unknown settings: {unknown}"
