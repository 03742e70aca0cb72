"""Logged outcomes as weighted training data."""

from __future__ import annotations

import numpy as np
import pytest

from neural_router.pool import ModelPool
from neural_router.training.update.datasets import logged_dataset, row_shares

from tests.conftest import TINY_POOL

def test_logged_dataset_weights():
    pool = ModelPool.model_validate(TINY_POOL)
    rows = [{"prompt": "p1", "model": "big", "score": 1.0, "id": "r1", "propensity": 0.05, "chosen": True,
             "cost_usd": 0.01, "latency_ms": None, "output_tokens": 12},
            {"prompt": "p1", "model": "small", "score": 0.0, "id": "r1", "propensity": None, "chosen": False},
            {"prompt": "p2", "model": "big-alias", "score": 0.5, "id": "r2", "propensity": 0.8, "chosen": True},
            {"prompt": "p3", "model": "unknown-model", "score": 1.0, "id": "r3", "propensity": 1.0, "chosen": True}]
    ds, w, skipped = logged_dataset(rows, ["big", "mid", "small"], pool, clip=10.0)
    assert ds.prompts == ["p1", "p2"] and skipped["unknown model"] == 1
    assert np.isnan(ds.scores[0, 1]) and ds.scores[0, 0] == 1.0 and ds.scores[0, 2] == 0.0
    assert w[0].tolist() == [10.0, 0.0, 1.0] and np.isclose(w[1, 0], 1.25)
    assert ds.cost_usd[0, 0] == pytest.approx(0.01) and ds.output_tokens[0, 0] == 12
    _, naive, _ = logged_dataset(rows, ["big", "mid", "small"], pool, clip=10.0, importance_weighting=False)
    assert naive[0].tolist() == [1.0, 0.0, 1.0] and naive[1, 0] == 1.0
    _, norm, _ = logged_dataset(rows, ["big", "mid", "small"], pool, clip=10.0, normalize=True)
    assert np.isclose((norm[0, 0] + norm[1, 0]) / 2, 1.0) and np.isclose(norm[0, 0] / norm[1, 0], 8.0)
    assert norm[0, 2] == 1.0


def test_row_shares_follow_the_parents_evidence():
    seen = {"a": 100, "b": 100, "c": 0}
    shares = row_shares(["a", "b", "c", "d"], np.array([100, 400, 50, 0]), seen, 0.5)
    # a: nothing new -> base; b: 3/4 new; c: parent never saw it -> all; d: no outcomes -> base
    assert np.allclose(shares, [0.5, 0.75, 1.0, 0.5])
    assert np.allclose(row_shares(["a"], np.array([10]), {}, 0.5), [0.5])   # old parent: base share
