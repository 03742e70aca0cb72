"""train_router: weights, soups, the initial quality bias."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neural_router.modeling.model import RouterModel
from neural_router.training.activation_cache import predict_router
from neural_router.training.config import TrainConfig
from neural_router.training.router_init import initial_quality_bias
from neural_router.training.trainer import train_router
from neural_router.training.update.finetune import UpdateSteps, update_router

from tests.conftest import tiny_encoder_config
from tests.training.helpers import CFG, tiny

def test_zero_weight_equals_unobserved_and_unit_weights_change_nothing(tiny_data_file, tiny_pool_file):
    pool, ds = tiny(tiny_data_file, tiny_pool_file)
    ds = ds.subset(np.arange(48))
    cfg = TrainConfig(**{**CFG, "epochs": 1})
    enc = tiny_encoder_config()
    j = ds.models.index("small")
    masked = ds.subset(np.arange(len(ds)))
    masked.scores[:, j] = np.nan
    masked.output_tokens[:, j] = np.nan
    w = np.ones_like(ds.scores)
    w[:, j] = 0.0
    probe = ["math question 7: integral prime sum", "hello weather movie friend"]

    def fit(data, weights=None):
        torch.manual_seed(0)
        m, tok, hist = train_router(data, None, pool, cfg, encoder_config=enc, progress=False,
                                    sample_weights=weights)
        return predict_router(m, tok, pool, probe).quality, hist

    q_mask, _ = fit(masked)
    q_zero, _ = fit(ds, w)
    q_plain, h_plain = fit(ds)
    q_ones, h_ones = fit(ds, np.ones_like(ds.scores))
    assert np.allclose(q_mask, q_zero, atol=1e-5)
    assert np.allclose(q_plain, q_ones, atol=1e-4)
    assert abs(h_plain[-1]["train_loss"] - h_ones[-1]["train_loss"]) < 1e-4
    assert not np.allclose(q_plain, q_zero, atol=1e-3)   # the weights did matter
    with pytest.raises(ValueError, match="sample_weights"):
        train_router(ds, None, pool, cfg, encoder_config=enc, progress=False,
                     sample_weights=np.ones((2, 2)))


def test_soup_averages_fine_tunes_from_the_same_start(tiny_trained_dir, tiny_data_file, tiny_pool_file,
                                                     monkeypatch):
    """soup=N trains N fine-tunes from the same weights (seeds seed, seed+1, ...) and returns the mean
    of their weights, before the interpolation toward the parent."""
    import neural_router.training.trainer as T

    parent = RouterModel.from_pretrained(tiny_trained_dir)
    pool, ds = tiny(tiny_data_file, tiny_pool_file)
    runs = []
    real_fit = T._fit

    def spy(model, *a, **kw):
        runs.append({"start": {k: v.clone() for k, v in model.state_dict().items()}, "seed": a[4]})
        state, hist = real_fit(model, *a, **kw)
        runs[-1]["end"] = {k: v.clone() for k, v in state.items()}
        return state, hist

    monkeypatch.setattr(T, "_fit", spy)
    cfg = TrainConfig(**{**CFG, "epochs": 2, "soup": 3, "seed": 7})
    soup, _, hist = update_router(ds, None, pool, cfg, parent, UpdateSteps(interpolate=0.5))
    assert [r["seed"] for r in runs] == [7, 8, 9]
    assert [h["run"] for h in hist] == [1, 1, 2, 2, 3, 3]
    start = parent.state_dict()
    for k, v in soup.state_dict().items():
        if not v.is_floating_point():
            continue
        assert all(torch.equal(r["start"][k], runs[0]["start"][k]) for r in runs), k   # one starting point
        mean = torch.stack([r["end"][k] for r in runs]).mean(0)
        assert torch.allclose(v, 0.5 * mean + 0.5 * start[k], atol=1e-6), k
    assert not torch.allclose(runs[0]["end"]["quality.weight"], runs[1]["end"]["quality.weight"])
    with pytest.raises(ValueError, match="soup"):
        TrainConfig(**{**CFG, "soup": 0})


def test_train_soup_reaches_the_config_and_the_model_card(tiny_data_file, tiny_pool_file, tiny_train_config,
                                                          tmp_path):
    import neural_router.training.train as tr

    out = tr.run_train([str(tiny_data_file)], tmp_path / "r", tiny_train_config, tiny_pool_file,
                       {"soup": 2, "epochs": 1}, encoder_config=tiny_encoder_config(), progress=False)
    tm = json.loads((out / "training_metrics.json").read_text())
    assert tm["config"]["soup"] == 2 and [h["run"] for h in tm["history"]] == [1, 2]
    assert "over a soup of 2 fine-tunes" in (out / "README.md").read_text()


def test_initial_quality_bias_is_the_logit_of_each_models_mean_score():
    scores = np.array([[1, 0, np.nan, 1], [0, 0, np.nan, 1], [1, 0, np.nan, 1], [1, np.nan, np.nan, 1]],
                      dtype=np.float32)
    b = initial_quality_bias(scores)
    assert b[0] == pytest.approx(np.log(0.75 / 0.25), abs=1e-5)
    assert b[1] == pytest.approx(np.log(0.02 / 0.98), abs=1e-5)   # all failures: clipped, still finite
    assert b[2] == 0.0                                             # never observed: p = 0.5
    assert b[3] == pytest.approx(np.log(0.98 / 0.02), abs=1e-5)
    w = np.ones_like(scores)
    w[1, 0] = 3.0                                                  # weights count: 3 / 6 successes
    assert initial_quality_bias(scores, w)[0] == pytest.approx(0.0, abs=1e-6)


def test_init_quality_bias_starts_a_router_trained_on_little_data_calibrated(tiny_data_file, tiny_pool_file):
    pool, ds = tiny(tiny_data_file, tiny_pool_file)
    ds = ds.subset(np.arange(12))
    mean = np.nanmean(ds.scores, 0)

    def fit(init):
        cfg = TrainConfig(**{**CFG, "epochs": 1, "lr_head": 1e-6, "init_quality_bias": init})
        model, tok, _ = train_router(ds, None, pool, cfg, encoder_config=tiny_encoder_config(), progress=False)
        return predict_router(model, tok, pool, ds.prompts).quality.mean(0)

    # a few optimizer steps leave the heads where they start: near 0.5 from 0, at the means with the option
    assert np.abs(fit(True) - mean).max() < 0.05 < np.abs(fit(False) - mean).max()
