"""The test harness's own rules: every skip has a kind, and CI may only skip GPU tests; durations by group.

* A test that cannot run skips with :func:`skip` (or the :func:`skip_unless` mark), which names its kind: a missing
  broker, Go toolchain, promtool, shared data set, GPU, or another tool. A plain ``pytest.skip`` gets its kind from
  the test's markers (``gpu``, ``kafka``, ``shared_data``), else ``other``.
* Under CI (``CI=true``) a skip of any kind but ``gpu`` is turned into a failure (an error when it happened in a
  fixture): a broken broker install, a port clash or a missing tool cannot make the suite green by skipping.
  Locally a skip stays a skip.
* At the end of the run one line says how many tests did not run, by kind and reason, and one line per group
  (unit, integration, reliability, deploy) gives its duration and slowest test; a test over
  :data:`UNMARKED_SLOW_S` without the ``slow`` marker is named, so the fast loop (``-m "not slow"``) stays fast.

Registered by ``tests/conftest.py`` (:func:`register`). Reading ``CI`` here is the harness's business: the product
packages read the environment only through their pydantic settings.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NoReturn

import pytest

__all__ = ["UNMARKED_SLOW_S", "Durations", "Harness", "Kind", "classify", "group_of", "register", "running_in_ci",
           "skip", "skip_unless"]


class Kind(StrEnum):
    """Why a test did not run."""

    GPU = "gpu"
    BROKER = "broker"
    GO = "go"
    PROMTOOL = "promtool"
    SHARED_DATA = "shared-data"
    TOOL = "tool"  # another command-line tool (openssl, bash)
    OTHER = "other"


ALLOWED_IN_CI = frozenset({Kind.GPU})
MARKER_KINDS = {"gpu": Kind.GPU, "kafka": Kind.BROKER, "shared_data": Kind.SHARED_DATA}
GROUPS = ("unit", "integration", "reliability", "deploy")
_GROUP_DIRS = {"tests/integration/": "integration", "tests/reliability/": "reliability",
               "tests/test_deploy/": "deploy"}
UNMARKED_SLOW_S = 5.0
_KIND_PREFIX = re.compile(rf"^({'|'.join(re.escape(kind.value) for kind in Kind)}): ")


def skip(kind: Kind, reason: str) -> NoReturn:
    """``pytest.skip`` with a kind (a failure under ``CI=true`` unless the kind is ``gpu``)."""
    pytest.skip(f"{kind}: {reason}")


def skip_unless(available: bool, kind: Kind, reason: str) -> pytest.MarkDecorator:
    """A ``skipif`` mark with a kind: skips the test when ``available`` is false."""
    return pytest.mark.skipif(not available, reason=f"{kind}: {reason}")


def running_in_ci() -> bool:
    """Whether ``CI`` is set to a true value (``true``, ``1`` or ``yes``, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def group_of(nodeid: str) -> str:
    """The suite group of a test id: ``integration``, ``reliability``, ``deploy``, or ``unit`` for the rest."""
    return next((group for prefix, group in _GROUP_DIRS.items() if nodeid.startswith(prefix)), "unit")


def _skip_reason(longrepr: object) -> str:
    message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(message).removeprefix("Skipped: ")


def classify(reason: str, markers: Iterable[str] = ()) -> tuple[Kind, str]:
    """``(kind, reason without its kind prefix)``: the prefix written by :func:`skip`, else the markers."""
    match = _KIND_PREFIX.match(reason)
    if match:
        return Kind(match.group(1)), reason[match.end():]
    kind = next((MARKER_KINDS[name] for name in markers if name in MARKER_KINDS), Kind.OTHER)
    return kind, reason


@dataclass
class Durations:
    """Seconds per test (setup + call + teardown), reported by group."""

    seconds: dict[str, float] = field(default_factory=dict)
    slow: set[str] = field(default_factory=set)

    def add(self, nodeid: str, seconds: float) -> None:
        self.seconds[nodeid] = self.seconds.get(nodeid, 0.0) + seconds

    def mark_slow(self, nodeid: str) -> None:
        self.slow.add(nodeid)

    def lines(self) -> list[str]:
        """One line per group that ran, then the tests over :data:`UNMARKED_SLOW_S` not marked ``slow``."""
        out = []
        for group in GROUPS:
            tests = {nodeid: s for nodeid, s in self.seconds.items() if group_of(nodeid) == group}
            if tests:
                slowest = max(tests, key=lambda nodeid: tests[nodeid])
                out.append(f"duration {group}: {sum(tests.values()):.1f} s, {len(tests)} tests; "
                           f"slowest {slowest} {tests[slowest]:.1f} s")
        unmarked = sorted((s, nodeid) for nodeid, s in self.seconds.items()
                          if s > UNMARKED_SLOW_S and nodeid not in self.slow)
        if unmarked:
            named = ", ".join(f"{nodeid} {s:.1f} s" for s, nodeid in reversed(unmarked))
            out.append(f"slow tests without @pytest.mark.slow (over {UNMARKED_SLOW_S:.0f} s): {named}")
        return out


def _counts(counter: Counter[tuple[Kind, str]]) -> str:
    return ", ".join(f"{n} {kind} ({reason})" for (kind, reason), n in
                     sorted(counter.items(), key=lambda item: (-item[1], item[0])))


@dataclass(eq=False)  # pluggy keeps plugins in sets: hashable by identity
class Harness:
    """The pytest plugin: skip policy (``ci``: only GPU skips stay skips), skip summary, durations by group."""

    ci: bool
    skipped: Counter[tuple[Kind, str]] = field(default_factory=Counter)
    refused: Counter[tuple[Kind, str]] = field(default_factory=Counter)
    durations: Durations = field(default_factory=Durations)

    def _judge(self, report: pytest.TestReport | pytest.CollectReport, markers: Iterable[str]) -> None:
        """Count a skip; under CI turn one that is not allowed there into a failure."""
        kind, reason = classify(_skip_reason(report.longrepr), markers)
        if not self.ci or kind in ALLOWED_IN_CI:
            self.skipped[kind, reason] += 1
            return
        self.refused[kind, reason] += 1
        report.outcome = "failed"
        report.longrepr = (f"skipped ({kind}: {reason}), and under CI=true only GPU tests may skip: "
                           "install what is missing (.ci/run does) or fix it")

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                            pytest.TestReport]:
        report = yield
        if report.skipped and not hasattr(report, "wasxfail"):
            self._judge(report, (mark.name for mark in item.iter_markers()))
        if item.get_closest_marker("slow") is not None:
            self.durations.mark_slow(item.nodeid)
        return report

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Generator[None, pytest.CollectReport,
                                                                                   pytest.CollectReport]:
        report = yield
        if report.skipped:  # a module-level skip or importorskip: the whole module did not run
            self._judge(report, (mark.name for mark in collector.iter_markers()))
        return report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.durations.add(report.nodeid, report.duration)

    def summary_line(self) -> str:
        """How many tests did not run, by kind and reason (and, under CI, how many skips failed instead)."""
        line = f"not run: {_counts(self.skipped) or 'none'}"
        if self.refused:
            line += f"; failed because CI=true allows only GPU skips: {_counts(self.refused)}"
        return line

    @pytest.hookimpl(trylast=True)  # after --durations, just before the short test summary
    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_line(self.summary_line())
        for line in self.durations.lines():
            terminalreporter.write_line(line)


def register(config: pytest.Config) -> Harness:
    """Register the harness plugin (once per run); ``CI`` is read now."""
    existing = config.pluginmanager.get_plugin("l2g-harness")
    if isinstance(existing, Harness):
        return existing
    harness = Harness(ci=running_in_ci())
    config.pluginmanager.register(harness, "l2g-harness")
    return harness
