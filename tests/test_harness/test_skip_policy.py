"""The harness's skip policy (``tests/_harness.py``), run on small suites with pytester: under ``CI=true`` only a GPU
skip stays a skip, every other kind (broker, Go, promtool, shared data, a plain skip) fails; locally all of them
skip, and one line at the end counts them by kind and reason. Also the durations by group."""

from __future__ import annotations

import pytest

from tests._harness import UNMARKED_SLOW_S, Durations, Kind, classify, group_of

CONFTEST = """
import pytest

from tests import _harness


def pytest_configure(config):
    _harness.register(config)


@pytest.fixture
def broker():
    _harness.skip(_harness.Kind.BROKER, "tansu broker unavailable: no tansu binary at /nonexistent")
"""
# Hypothesis's plugin costs about 1.7 s per inner session and these suites do not use it.
ARGS = ("-p", "no:hypothesispytest", "-p", "no:cacheprovider")
INI = "[pytest]\nmarkers =\n    gpu: gpu\n    kafka: kafka\n    slow: slow\n"
SUITE = """
import pytest

from tests._harness import Kind, skip, skip_unless


def test_uses_the_broker(broker):
    pass


@skip_unless(False, Kind.GPU, "needs a CUDA device")
def test_on_the_gpu():
    pass


def test_needs_go():
    skip(Kind.GO, "no Go toolchain")


@pytest.mark.kafka
def test_plain_skip_of_a_kafka_test():
    pytest.skip("no broker")


def test_plain_skip():
    pytest.skip("not today")


def test_passes():
    pass


@pytest.mark.xfail(strict=True, reason="known")
def test_known_failure():
    assert False
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini(INI)
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def test_locally_every_skip_stays_a_skip_and_is_counted(suite: pytest.Pytester,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest(*ARGS)
    result.assert_outcomes(passed=1, skipped=5, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["not run: 1 broker (no broker), 1 broker (tansu broker unavailable: no tansu binary "
                                 "at /nonexistent), 1 go (no Go toolchain), 1 gpu (needs a CUDA device), "
                                 "1 other (not today)"])
    result.stdout.fnmatch_lines(["duration unit: * s, 7 tests; slowest test_suite.py::*"])


@pytest.mark.parametrize("value", ["true", "1"])
def test_under_ci_only_the_gpu_skip_stays_a_skip(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                 value: str) -> None:
    monkeypatch.setenv("CI", value)
    result = suite.runpytest(*ARGS)
    # The broker fixture's skip becomes an error at setup, the skips in the test bodies failures.
    result.assert_outcomes(passed=1, skipped=1, failed=3, errors=1, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*skipped (broker: tansu broker unavailable: no tansu binary at /nonexistent), and under CI=true only GPU "
        "tests may skip*",
        "not run: 1 gpu (needs a CUDA device); failed because CI=true allows only GPU skips: 1 broker (no broker), "
        "1 broker (tansu broker unavailable: no tansu binary at /nonexistent), 1 go (no Go toolchain), "
        "1 other (not today)",
    ])


def test_a_module_level_skip_fails_under_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_module="import pytest\npytest.importorskip('no_such_module_l2g')\n\n"
                                    "def test_never():\n    pass\n")
    monkeypatch.delenv("CI", raising=False)
    local = pytester.runpytest(*ARGS)
    local.assert_outcomes(skipped=1)
    local.stdout.fnmatch_lines(["not run: 1 other (could not import 'no_such_module_l2g'*"])
    monkeypatch.setenv("CI", "true")
    ci = pytester.runpytest(*ARGS)
    ci.assert_outcomes(errors=1)
    assert ci.ret != pytest.ExitCode.OK


def test_a_run_without_skips_says_so(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_fine="def test_fine():\n    pass\n")
    monkeypatch.setenv("CI", "true")
    result = pytester.runpytest(*ARGS)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["not run: none"])


def test_classify_by_prefix_then_markers() -> None:
    assert classify("promtool: promtool not installed") == (Kind.PROMTOOL, "promtool not installed")
    assert classify("shared-data: no data", ["gpu"]) == (Kind.SHARED_DATA, "no data")
    assert classify("needs a CUDA device", ["parametrize", "gpu"]) == (Kind.GPU, "needs a CUDA device")
    assert classify("gone", ["shared_data"]) == (Kind.SHARED_DATA, "gone")
    assert classify("odd: reason") == (Kind.OTHER, "odd: reason")


def test_groups_follow_the_test_directories() -> None:
    assert group_of("tests/integration/test_demo.py::test_x") == "integration"
    assert group_of("tests/reliability/test_access.py::test_x") == "reliability"
    assert group_of("tests/test_deploy/test_helm.py::test_x[a]") == "deploy"
    assert group_of("tests/test_l2g_core/test_index.py::test_x") == "unit"
    assert group_of("tests/test_architecture.py::test_x") == "unit"


def test_durations_by_group_name_unmarked_slow_tests() -> None:
    durations = Durations()
    slow = UNMARKED_SLOW_S + 1.0
    for phase_seconds in (0.5, 2.0, 0.5):  # setup, call, teardown
        durations.add("tests/test_stream/test_query.py::test_a", phase_seconds)
    durations.add("tests/test_stream/test_query.py::test_b", slow)
    durations.add("tests/integration/test_demo.py::test_c", slow + 10)
    durations.mark_slow("tests/integration/test_demo.py::test_c")
    assert durations.lines() == [
        f"duration unit: {3.0 + slow:.1f} s, 2 tests; slowest tests/test_stream/test_query.py::test_b {slow:.1f} s",
        f"duration integration: {slow + 10:.1f} s, 1 tests; slowest tests/integration/test_demo.py::test_c "
        f"{slow + 10:.1f} s",
        f"slow tests without @pytest.mark.slow (over {UNMARKED_SLOW_S:.0f} s): "
        f"tests/test_stream/test_query.py::test_b {slow:.1f} s",
    ]
