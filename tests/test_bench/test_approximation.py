"""bench.bench_approximation: variant parsing, the forced-training cap and the comparison with exact search."""

from __future__ import annotations

import numpy as np
import pytest

from bench.bench_approximation import EXACT, compare, indexed_features, parse_variant, trainable
from bench.bench_retrieval import ModeRun
from l2g_core import IndexConfig


def test_builtin_and_field_variants() -> None:
    assert parse_variant("exact").options == {"index_kind": "flat", "rerank_dtype": "float16"}
    assert parse_variant("default").options == {"index_kind": "ivfpq"}
    v = parse_variant("fast:nprobe=8,pq_bytes=16")
    assert (v.name, v.options) == ("fast", {"index_kind": "ivfpq", "nprobe": 8, "pq_bytes": 16})


@pytest.mark.parametrize("text", ["nope", "x:not_a_field=1", "x:nprobe"])
def test_bad_variants_are_refused(text: str) -> None:
    with pytest.raises(SystemExit):
        parse_variant(text)


def test_training_sample_is_capped_for_ivfpq_only() -> None:
    keep = IndexConfig.max_features_per_frame
    assert trainable({"index_kind": "ivfpq"}, [keep + 100, 600 - keep])["train_size"] == 600  # kept, not extracted
    assert trainable({"index_kind": "ivfpq"}, [keep] * 10**4)["train_size"] == IndexConfig.train_size
    assert trainable({"index_kind": "ivfpq", "train_size": 500}, [1000])["train_size"] == min(500, keep)
    assert trainable({"index_kind": "ivfpq", "max_features_per_frame": 10}, [keep] * 7)["train_size"] == 70
    assert "train_size" not in trainable({"index_kind": "flat"}, [1000])


def test_indexed_features_follow_each_variants_cap() -> None:
    keep = IndexConfig.max_features_per_frame
    assert indexed_features({"index_kind": "flat"}, [keep + 100, 7]) == keep + 7
    assert indexed_features({"index_kind": "ivfpq", "max_features_per_frame": 10}, [keep, 7, 0]) == 17


def _run(ap: list[float]) -> dict[str, ModeRun]:
    values = {m: np.asarray(ap, np.float64) for m in ("mAP", "segment_AP", "P@1")}
    return {"local": ModeRun(values, np.zeros(len(ap)), np.full(len(ap), 0.01))}


def test_difference_to_exact_and_the_one_point_bar() -> None:
    exact = [0.5, 0.6, 0.7, 0.8]
    runs = {EXACT: _run(exact), "same": _run(exact), "worse": _run([a - 0.02 for a in exact]),
            "better": _run([a + 0.05 for a in exact])}
    table = compare(runs, np.ones(4, bool))
    diffs = {name: table[name]["local"]["minus_exact_mAP"]["value"] for name in runs}  # type: ignore[index]
    assert diffs == pytest.approx({EXACT: 0.0, "same": 0.0, "worse": -2.0, "better": 5.0})
    assert [table[n]["local"]["within_1pt"] for n in ("same", "worse", "better")] == [True, False, True]
    half = compare(runs, np.array([True, True, False, False]))
    assert half["worse"]["local"]["mAP"]["value"] == pytest.approx(53.0)  # type: ignore[index]
