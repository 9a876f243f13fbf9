"""SMACOF in torch against scikit-learn, weights, batching and classical MDS."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.manifold import smacof as sk_smacof

from l2g_core.rerank.smacof import classical_mds, smacof


def _dissimilarities(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.standard_normal((n, 5))
    d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
    d = d + 0.05 * rng.random((n, n))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


@pytest.mark.parametrize("seed", [0, 1])
def test_unweighted_matches_sklearn(seed: int) -> None:
    delta = _dissimilarities(40, seed)
    init = np.random.default_rng(seed + 10).uniform(size=(40, 3))
    x_ref, stress_ref, iters_ref = sk_smacof(
        delta, n_components=3, init=init, n_init=1, max_iter=300, eps=1e-6, return_n_iter=True,
        normalized_stress=False,
    )
    res = smacof(torch.from_numpy(delta), dim=3, init=torch.from_numpy(init), max_iter=300, eps=1e-6)
    assert float(res.stress[0]) == pytest.approx(float(stress_ref), rel=1e-6)
    assert int(res.n_iter[0]) == iters_ref
    np.testing.assert_allclose(res.embedding[0].numpy(), x_ref, atol=1e-6)


def test_default_start_is_deterministic_and_stress_never_increases() -> None:
    delta = torch.from_numpy(_dissimilarities(50, 2))
    a = smacof(delta, dim=3, max_iter=50, eps=0.0)
    b = smacof(delta, dim=3, max_iter=50, eps=0.0)
    assert torch.equal(a.embedding, b.embedding)
    stresses = [float(smacof(delta, dim=3, max_iter=t, eps=0.0).stress[0]) for t in (1, 2, 5, 20, 50)]
    assert all(later <= earlier + 1e-9 for earlier, later in itertools.pairwise(stresses))
    assert stresses[-1] < stresses[0]


def test_batched_equals_individual_and_stops_independently() -> None:
    deltas = torch.stack([torch.from_numpy(_dissimilarities(30, s)) for s in range(3)])
    batch = smacof(deltas, dim=4, max_iter=200, eps=1e-5)
    for i in range(3):
        single = smacof(deltas[i], dim=4, max_iter=200, eps=1e-5)
        assert torch.allclose(batch.embedding[i], single.embedding[0], atol=1e-9)
        assert int(batch.n_iter[i]) == int(single.n_iter[0])


def test_weighted_ignores_zero_weight_pairs() -> None:
    delta = torch.from_numpy(_dissimilarities(30, 4))
    corrupted = delta.clone()
    corrupted[0, 1] = corrupted[1, 0] = 50.0  # a wrong entry ...
    weights = torch.ones_like(delta)
    weights[0, 1] = weights[1, 0] = 0.0  # ... that the weights switch off
    res = smacof(corrupted, dim=5, weights=weights, max_iter=500, eps=1e-9)
    x = res.embedding[0]
    d01 = float(torch.linalg.norm(x[0] - x[1]))
    assert abs(d01 - float(delta[0, 1])) < 0.5 * abs(50.0 - float(delta[0, 1]))
    # weighted stress never increases from the start (majorisation)
    start = smacof(corrupted, dim=5, weights=weights, max_iter=1, eps=0.0)
    assert float(res.stress[0]) <= float(start.stress[0]) + 1e-9


def test_classical_mds_recovers_euclidean_configuration() -> None:
    rng = np.random.default_rng(7)
    pts = rng.standard_normal((20, 3))
    d = torch.from_numpy(np.linalg.norm(pts[:, None] - pts[None], axis=-1))
    x = classical_mds(d[None], 3)[0]
    rec = torch.cdist(x, x)
    assert torch.allclose(rec, d, atol=1e-8)
