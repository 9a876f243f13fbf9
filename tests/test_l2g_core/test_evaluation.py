"""Revisited-protocol AP, precision/recall@k and group ground truth."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from l2g_core.evaluation import (
    GroundTruth,
    average_precision,
    group_ground_truth,
    load_groups,
    mean_average_precision,
    precision_at_k,
    recall_at_k,
)


def test_ap_trapezoid_values() -> None:
    gt = GroundTruth(ok=frozenset({"a", "c"}))
    assert average_precision(["a", "c", "b"], gt) == pytest.approx(1.0)
    # positives at ranks 0 and 2: (1+1)/2/2 + (1/2 + 2/3)/2/2
    assert average_precision(["a", "b", "c"], gt) == pytest.approx(0.5 + (0.5 + 2 / 3) / 4)
    assert average_precision(["b", "x"], gt) == 0.0


def test_junk_is_removed_not_counted() -> None:
    gt = GroundTruth(ok=frozenset({"a"}), junk=frozenset({"j"}))
    assert average_precision(["j", "a"], gt) == pytest.approx(1.0)
    assert precision_at_k(["j", "a", "b"], gt, 1) == 1.0
    assert recall_at_k(["b", "j", "a"], gt, 2) == 1.0
    assert recall_at_k(["b", "c", "a"], gt, 2) == 0.0


def test_queries_without_positives_are_excluded() -> None:
    gts = [GroundTruth(ok=frozenset({"a"})), GroundTruth(ok=frozenset())]
    assert mean_average_precision([["a"], ["a"]], gts) == pytest.approx(1.0)
    assert math.isnan(average_precision(["a"], gts[1]))


def test_groups_file(tmp_path: Path) -> None:
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"groups": {"x": ["1.jpg", "2.jpg", "3.jpg"], "y": ["4.jpg"]}}))
    groups = load_groups(path)
    gts = group_ground_truth(["1.jpg", "4.jpg"], groups)
    assert gts[0].ok == {"2.jpg", "3.jpg"} and gts[0].junk == {"1.jpg"}
    assert gts[1].ok == frozenset()


def test_real_groups_file_parses(shared_data: Path) -> None:
    groups = load_groups(shared_data / "gt" / "landmark_groups.json")
    assert len(groups["sacre_coeur"]) == 12
    assert all((shared_data / p).exists() for items in groups.values() for p in items)
