"""The ``filterwarnings`` of ``pyproject.toml``: a deprecation attributed to the project's own code fails the test,
one attributed to a dependency is recorded and shown in the warnings summary."""

from __future__ import annotations

import warnings

import pytest


def _warn(category: type[Warning], module: str, message: str = "old API") -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as seen:  # keeps the configured filters, records what they let through
        warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module, registry={})
    return seen


@pytest.mark.parametrize("module", ["l2g_core.index", "plugins.xfeat", "stream", "stream.kafka.consumer", "bench.run",
                                    "tests.test_harness"])
@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning])
def test_a_deprecation_in_the_project_fails(module: str, category: type[Warning]) -> None:
    with pytest.raises(category, match="old API"):
        _warn(category, module)


@pytest.mark.parametrize("module", ["kafka.protocol.schemas.load_json", "faiss", "torch.nn", "streamz", "testsuite"])
def test_a_deprecation_in_a_dependency_is_shown(module: str) -> None:
    seen = _warn(DeprecationWarning, module)
    assert [str(w.message) for w in seen] == ["old API"]


def test_only_kafka_pythons_read_text_is_silenced() -> None:
    message = "read_text is deprecated. Use files() instead."
    assert _warn(DeprecationWarning, "kafka.protocol.schemas.load_json", message) == []
    assert _warn(DeprecationWarning, "importlib.resources._legacy", "open_text is deprecated. Use files()") == []
    assert len(_warn(DeprecationWarning, "kafka.protocol.schemas.load_json", "another deprecation")) == 1
    assert len(_warn(DeprecationWarning, "faiss.loader", message)) == 1
