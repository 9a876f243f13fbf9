"""bench/gpu_check on a machine without CUDA: one machine-readable skipped line, exit 0."""

from __future__ import annotations

import json

import pytest
import torch

from bench import gpu_check


def test_without_cuda_it_says_skipped_and_exits_0(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    assert json.loads(capsys.readouterr().out.strip()) == {"gpu_check": "skipped: no CUDA"}
