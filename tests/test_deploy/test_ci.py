"""``.ci/run``: strict bash, the README's `make test`, promtool checks of every Prometheus file, and the tools the
deploy tests need (promtool, Go for the Helm renderer) installed first."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests import _harness
from tests.test_deploy.support import ROOT

CI = ROOT / ".ci" / "run"


def _commands() -> list[str]:
    """Non-comment lines outside the install function, in order."""
    lines, in_function = [], False
    for raw in CI.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("apt_install() {"):
            in_function = True
        elif in_function and raw.startswith("}"):
            in_function = False
        elif line and not line.startswith("#") and not in_function:
            lines.append(line)
    return lines


def test_strict_and_executable() -> None:
    text = CI.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in _commands()
    assert os.access(CI, os.X_OK)
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(CI)], check=True, timeout=30)


def test_runs_make_test_and_promtool() -> None:
    commands = _commands()
    assert "make test" in commands, "CI must run the README's test command"
    expected = ["promtool check config deploy/prometheus/prometheus.yml",
                "promtool check rules deploy/prometheus/alerts.yml",
                "promtool test rules deploy/prometheus/alerts_test.yml"]
    for command in expected:
        assert command in commands
        assert Path(ROOT / command.split()[-1]).is_file()
    # promtool and Go are installed before the tests run, so the promtool and Helm tests do not skip in CI.
    assert commands.index("apt_install promtool prometheus") < commands.index("make test")
    assert commands.index("apt_install go golang-go") < commands.index("make test")
    # ... and under CI=true, where a skip of anything but a GPU test fails (tests/_harness.py).
    assert commands.index("export CI=true") < commands.index("make test")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make test" in readme


def test_installs_the_browser_before_the_tests() -> None:
    """The ui's browser test (tests/integration/test_ui_browser.py) finds chromium and its driver under CI=true."""
    commands = _commands()
    for line in ("apt_install chromium chromium", "apt_install chromedriver chromium-driver"):
        assert commands.index(line) < commands.index("make test"), line


def test_installs_without_recommends() -> None:
    text = CI.read_text(encoding="utf-8")
    assert 'apt-get install -y -qq --no-install-recommends "$package"' in text
    assert "sudo -n" in text


@_harness.skip_unless(shutil.which("bash") is not None, _harness.Kind.TOOL, "no bash")
def test_install_path_with_fake_apt(tmp_path: Path) -> None:
    """Run ``apt_install`` for promtool and go, both absent, with a fake ``apt-get`` that 'installs' them:
    one ``apt-get update`` for both, then one install each; an installed tool is left alone."""
    function = CI.read_text(encoding="utf-8").split("apt_install() {", 1)[1].split("\n}\n", 1)[0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        'case "$*" in\n'
        f'  *install*prometheus) printf "#!/bin/sh\\n" > {bin_dir}/promtool; chmod +x {bin_dir}/promtool;;\n'
        f'  *install*golang-go) printf "#!/bin/sh\\n" > {bin_dir}/go; chmod +x {bin_dir}/go;;\n'
        "esac\n")
    (bin_dir / "apt-get").chmod(0o755)
    (bin_dir / "id").write_text("#!/bin/sh\necho 0\n")  # act as root: no sudo
    (bin_dir / "id").chmod(0o755)
    for tool in ("env", "sh", "chmod"):
        target = shutil.which(tool)
        assert target is not None
        (bin_dir / tool).symlink_to(target)
    script = (f"set -euo pipefail\napt_install() {{{function}\n}}\n"
              "apt_install promtool prometheus\napt_install go golang-go\napt_install go golang-go\n")
    bash = shutil.which("bash")
    assert bash is not None
    proc = subprocess.run([bash, "-c", script], env={"PATH": str(bin_dir)}, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert calls == ["update -qq", "install -y -qq --no-install-recommends prometheus",
                     "install -y -qq --no-install-recommends golang-go"]
    assert (bin_dir / "promtool").is_file() and (bin_dir / "go").is_file()
