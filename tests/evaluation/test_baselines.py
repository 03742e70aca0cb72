"""Tests for neural_router.baselines on synthetic data with known structure."""

from __future__ import annotations

import numpy as np
import pytest

from neural_router.evaluation import baselines as b
from neural_router.evaluation import metrics as m

NAN = np.nan


def _clusters(n_per: int, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well separated clusters; model 0 is right on cluster 0, model 1 on cluster 1."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((2, d))
    centres[0, 0] = 1.0
    centres[1, 1] = 1.0
    lab = np.repeat([0, 1], n_per)
    emb = centres[lab] + 0.1 * rng.standard_normal((2 * n_per, d))
    scores = np.stack([(lab == 0), (lab == 1)], axis=1).astype(float)
    return emb, scores


def test_mean_cost_predictor_masks_nan() -> None:
    costs = np.array([[1.0, NAN, NAN], [3.0, 4.0, NAN]])
    out = b.mean_cost_predictor(costs)
    np.testing.assert_allclose(out[:2], [2.0, 4.0])
    assert np.isnan(out[2])


def test_knn_recovers_cluster_structure() -> None:
    emb, scores = _clusters(60)
    knn = b.KNNBaseline(k=10).fit(emb, scores)
    emb_t, scores_t = _clusters(20, seed=1)
    pred = knn.predict(emb_t)
    assert pred.shape == scores_t.shape
    np.testing.assert_allclose(pred, scores_t)  # neighbours all come from the same cluster


def test_knn_ignores_nan_neighbours() -> None:
    emb = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    scores = np.array([[NAN, 0.0], [NAN, 0.0], [0.3, 1.0], [0.5, 1.0]])
    knn = b.KNNBaseline(k=2).fit(emb, scores)
    pred = knn.predict(np.array([[1.0, 0.01]]))
    # model 0 is observed only on the two far prompts: they are its 2 nearest observed neighbours
    assert pred[0, 0] == pytest.approx(0.4)
    assert pred[0, 1] == pytest.approx(0.0)
    # k larger than the observations: all of them; cosine ignores the scale
    big = b.KNNBaseline(k=10).fit(emb, scores).predict(np.array([[5.0, 0.05]]))
    np.testing.assert_allclose(big[0], [0.4, 0.5])


def test_knn_chunking_does_not_change_predictions() -> None:
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((200, 8))
    scores = rng.random((200, 3))
    scores[rng.random((200, 3)) < 0.2] = NAN
    q = rng.standard_normal((37, 8))
    a = b.KNNBaseline(k=7, chunk_size=5).fit(emb, scores).predict(q)
    c = b.KNNBaseline(k=7).fit(emb, scores).predict(q)
    np.testing.assert_allclose(a, c)


def _separable(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    w = np.random.default_rng(123).standard_normal((d, 3))
    y = (x @ w > 0).astype(float)
    return x, y


def test_mlp_learns_separable_task_and_respects_nan_mask() -> None:
    x, y = _separable(2000, 384, seed=0)
    y_train = y.copy()
    # NaNs must be masked, not treated as targets: hide 30% and poison nothing else
    hide = np.random.default_rng(1).random(y.shape) < 0.3
    y_train[hide] = NAN
    mlp = b.MLPBaseline(epochs=30, seed=0).fit(x, y_train)
    assert np.all(np.isfinite(mlp.loss_history))
    assert mlp.loss_history[-1] < mlp.loss_history[0]
    x_t, y_t = _separable(500, 384, seed=2)
    pred = mlp.predict(x_t)
    assert pred.shape == (500, 3)
    assert np.all((pred > 0) & (pred < 1))
    for j in range(3):
        assert m.auroc(y_t[:, j], pred[:, j]) > 0.9


def test_mlp_is_deterministic_given_seed_and_soft_targets() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 20))
    y = np.clip(0.5 + 0.4 * np.tanh(x[:, :2]), 0, 1)  # soft targets in (0.1, 0.9)
    p1 = b.MLPBaseline(hidden=32, epochs=5, seed=7).fit(x, y).predict(x)
    p2 = b.MLPBaseline(hidden=32, epochs=5, seed=7).fit(x, y).predict(x)
    p3 = b.MLPBaseline(hidden=32, epochs=5, seed=8).fit(x, y).predict(x)
    np.testing.assert_array_equal(p1, p2)
    import torch

    before = torch.get_num_threads()
    b.MLPBaseline(hidden=8, epochs=1, num_threads=1).fit(x, y)
    assert torch.get_num_threads() == before  # thread cap is restored
    assert not np.allclose(p1, p3)
    full = b.MLPBaseline(hidden=32, epochs=200, lr=1e-2, seed=0, batch_size=None, dropout=0.0)
    pf = full.fit(x, y).predict(x)
    assert np.mean(np.abs(pf - y)) < 0.05  # soft targets are fit, not rounded to 0/1


def test_benchmark_prior_group_means_and_fallback() -> None:
    groups = ["a", "a", "b", "b", "b"]
    scores = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, NAN], [1.0, NAN], [0.0, NAN]])
    costs = np.array([[1.0, 10.0], [3.0, 30.0], [2.0, NAN], [2.0, NAN], [5.0, NAN]])
    prior = b.BenchmarkPriorBaseline().fit(groups, scores, costs)
    q, c = prior.predict(["a", "b", "zzz"])
    np.testing.assert_allclose(q[0], [0.5, 0.0])
    np.testing.assert_allclose(c[0], [2.0, 20.0])
    # group b never observed model 1 -> its global mean
    np.testing.assert_allclose(q[1], [2 / 3, 0.0])
    np.testing.assert_allclose(c[1], [3.0, 20.0])
    # unseen group -> global means
    np.testing.assert_allclose(q[2], [3 / 5, 0.0])
    np.testing.assert_allclose(c[2], [13 / 5, 20.0])


def test_baselines_plug_into_cost_quality_curve() -> None:
    emb, scores = _clusters(50)
    costs = np.tile([0.01, 1.0], (scores.shape[0], 1))
    knn = b.KNNBaseline(k=5).fit(emb, scores)
    pq = knn.predict(emb)
    pc = b.mean_cost_predictor(costs)
    cc, qq = m.cost_quality_curve(scores, costs, pq, pc, m.lambda_grid(pc, n=20))
    assert qq[0] == pytest.approx(1.0)       # knn routes each cluster to its right model
    assert qq[-1] == pytest.approx(0.5)      # cost-dominated: always the cheap model
    prior = b.BenchmarkPriorBaseline().fit(["x"] * len(scores), scores, costs)
    pq2, pc2 = prior.predict(["x"] * len(scores))
    rep = m.router_report("prior", scores, costs, pq2, pc2, [0.0, 100.0])
    assert rep["max_quality"] == pytest.approx(0.5)  # one group: can't tell prompts apart


def test_mlp_nan_entries_are_not_targets() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 10))
    y = np.ones((400, 2))
    y[:, 1] = 0.0
    y[rng.random(400) < 0.7, 0] = NAN  # model 0: 1 wherever observed, unobserved on 70%
    mlp = b.MLPBaseline(hidden=16, epochs=100, lr=1e-2, batch_size=None, dropout=0.0, seed=0)
    pred = mlp.fit(x, y).predict(x)
    assert pred[:, 0].mean() > 0.95   # reading NaN as 0 would pull this towards 0.3
    assert pred[:, 1].mean() < 0.05
