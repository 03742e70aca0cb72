"""Learning from logged outcomes: weighted/warm-started training, the update command and safe
promotion (tiny random encoder, synthetic data)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from neural_router.data.dataset import DataConfig, load_routing_data
from neural_router.feedback.store import FeedbackStore
from neural_router.modeling.model import RouterModel
from neural_router.pool import ModelPool
from neural_router.inference.interface import Predictions
from neural_router.inference.predictors import RouterLoadError
from neural_router.training.trainer import (ActivationCache, TrainConfig, calibrate_quality_bias, fit_head_mixture,
                                   initial_quality_bias, masked_losses, model_from_parent, rank_loss, train_router)
from neural_router.training.promotion import compare_on_logs, policy_probs, predict_router, promotion_verdict, reward_model_shift
from neural_router.training.update import (largest_scale, logged_dataset, parent_state_like, row_shares, run_update,
                             share_shift)

from tests.conftest import TINY_POOL, TOPICS, WORDS, tiny_encoder_config

CFG = dict(max_length=64, head_tokens=8, freeze_layers=1, hidden=32, epochs=2, batch_size=16,
           lr_head=3e-3, lr_encoder=1e-3)


def _tiny(tiny_data_file, tiny_pool_file):
    pool = ModelPool.from_yaml(tiny_pool_file)
    return pool, load_routing_data([str(tiny_data_file)], pool, DataConfig())


def test_masked_losses_weights_are_a_weighted_mean():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    scores = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, 1.0]])
    w = torch.tensor([[3.0, 5.0, 1.0], [1.0, 0.0, 2.0]])
    out = {"quality_logits": logits, "log_out_tokens": torch.zeros(2, 3), "log_latency": torch.zeros(2, 3)}
    nan = torch.full((2, 3), float("nan"))
    b = {"scores": scores, "log_out": nan, "log_lat": nan}
    cfg = TrainConfig()
    plain, parts = masked_losses(out, b, cfg)
    m = torch.isfinite(scores)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[m], scores[m], reduction="none")
    assert torch.isclose(plain, bce.mean()) and parts["n"] == 5
    weighted, parts = masked_losses(out, {**b, "weights": w}, cfg)
    keep = m & (w > 0)                      # weight 0 drops the cell, NaN stays masked
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], scores[keep], reduction="none")
    assert torch.isclose(weighted, (bce * w[keep]).sum() / w[keep].sum()) and parts["n"] == 4
    assert not torch.isclose(weighted, plain)


def test_rank_loss_is_a_listwise_cross_entropy_over_observed_models():
    nan = float("nan")
    scores = torch.tensor([[0.9, 0.2, nan], [0.5, 0.5, 0.5], [1.0, nan, nan], [0.0, 1.0, 0.6]])
    good = torch.tensor([[3.0, -1.0, 9.0], [0.0, 5.0, -5.0], [0.0, 0.0, 0.0], [-2.0, 2.0, 1.0]])
    bad = torch.tensor([[-1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, -2.0, 0.0]])
    t = 0.2
    # rows 1 (all scored the same) and 2 (one observed model) rank nothing; the NaN cell never counts
    expect = torch.stack([-(torch.softmax(scores[0, :2] / t, 0) * torch.log_softmax(good[0, :2], 0)).sum(),
                          -(torch.softmax(scores[3] / t, 0) * torch.log_softmax(good[3], 0)).sum()]).mean()
    assert torch.isclose(rank_loss(good, scores, None, t), expect)
    assert rank_loss(bad, scores, None, t) > rank_loss(good, scores, None, t) + 1.0
    w = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [3.0, 0.0, 3.0]])
    row3 = -(torch.softmax(scores[3, [0, 2]] / t, 0) * torch.log_softmax(good[3, [0, 2]], 0)).sum()
    row0 = expect * 2 - (-(torch.softmax(scores[3] / t, 0) * torch.log_softmax(good[3], 0)).sum())
    assert torch.isclose(rank_loss(good, scores, w, t), (row0 + 3.0 * row3) / 4.0)   # weight 0 = unobserved
    assert rank_loss(good, scores[[1, 2]], None, t) == 0.0
    z = good.clone().requires_grad_()
    rank_loss(z, scores, None, t).backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 2] == 0 and (z.grad[1:3] == 0).all()
    out = {"quality_logits": good, "log_out_tokens": torch.zeros(4, 3), "log_latency": torch.zeros(4, 3)}
    b = {"scores": scores, "log_out": torch.full((4, 3), nan), "log_lat": torch.full((4, 3), nan)}
    plain, _ = masked_losses(out, b, TrainConfig())
    ranked, parts = masked_losses(out, b, TrainConfig(loss_rank=0.5, rank_temperature=t))
    assert torch.isclose(ranked, plain + 0.5 * expect) and parts["rank"] == pytest.approx(float(expect))


def test_zero_weight_equals_unobserved_and_unit_weights_change_nothing(tiny_data_file, tiny_pool_file):
    pool, ds = _tiny(tiny_data_file, tiny_pool_file)
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


def test_init_from_copies_known_heads_and_cold_starts_new_models(tiny_trained_dir, tiny_data_file,
                                                                 tiny_pool_file):
    from neural_router.data.dataset import RoutingDataset
    from neural_router.training.update import align_models

    parent = RouterModel.from_pretrained(tiny_trained_dir)
    _, ds = _tiny(tiny_data_file, tiny_pool_file)
    models = list(parent.config.models) + ["newbie"]
    data = align_models(ds, models)
    assert isinstance(data, RoutingDataset) and np.isnan(data.scores[:, -1]).all()
    rc = RouterModel.from_pretrained(tiny_trained_dir).config
    from dataclasses import replace

    rc = replace(rc, models=models, binary=rc.binary + [True], latency_learned=rc.latency_learned + [False],
                 cost_scale=rc.cost_scale + [1.0], default_output_tokens=rc.default_output_tokens + [99.0])
    ids = torch.randint(1000, 2000, (4, 10))
    mask, feats = torch.ones(4, 10, dtype=torch.long), torch.randn(4, 6)
    with torch.no_grad():
        before = parent(ids, mask, feats)["quality_logits"]
        child = model_from_parent(rc, parent, data).eval()
        after = child(ids, mask, feats)["quality_logits"]
        shifted = model_from_parent(rc, parent, data, cold_start_prior=0.9).eval()(ids, mask, feats)["quality_logits"]
    assert torch.allclose(after[:, :3], before, atol=1e-6)            # known models unchanged
    assert torch.allclose(after[:, 3], before.mean(1), atol=1e-5)     # new = the average known model
    mean_q = float(np.nanmean(ds.scores))
    expected = np.log(0.9 / 0.1) - np.log(mean_q / (1 - mean_q))
    assert torch.allclose(shifted[:, 3] - after[:, 3], torch.tensor(expected, dtype=torch.float32), atol=1e-4)
    assert torch.allclose(shifted[:, :3], before, atol=1e-6)
    with torch.no_grad():
        assert np.isclose(float(child.out_tokens.bias[3]), np.log1p(99.0), atol=1e-5)
    # the parent is untouched and the copy does not share its encoder
    assert child.encoder is not parent.encoder


def test_interpolate_keeps_that_share_of_the_update(tiny_trained_dir, tiny_data_file, tiny_pool_file):
    """interpolate=a returns a * fine-tuned + (1 - a) * starting point, the parent for known rows."""
    parent = RouterModel.from_pretrained(tiny_trained_dir)
    pool, ds = _tiny(tiny_data_file, tiny_pool_file)
    cfg = TrainConfig(**{**CFG, "epochs": 1})

    def fit(a):
        torch.manual_seed(0)
        m, _, _ = train_router(ds, None, pool, cfg, progress=False, init_from=parent, interpolate=a)
        return m.state_dict()

    full, half = fit(1.0), fit(0.5)
    torch.manual_seed(0)
    rows, _, _ = train_router(ds, None, pool, cfg, progress=False, init_from=parent, interpolate=0.5,
                              row_interpolate=np.array([1.0, 0.5, 0.25]))
    rows = rows.state_dict()
    start = parent.state_dict()
    moved = [k for k in start if start[k].is_floating_point() and not torch.allclose(full[k], start[k])]
    assert "quality.weight" in moved and "trunk.1.weight" in moved
    for k in moved:
        assert torch.allclose(half[k], 0.5 * full[k] + 0.5 * start[k], atol=1e-6), k
    # per-model shares for the head rows; the trunk keeps the base share
    assert torch.allclose(rows["trunk.1.weight"], half["trunk.1.weight"])
    for j, a in enumerate((1.0, 0.5, 0.25)):
        for k in ("quality.weight", "quality.bias", "out_tokens.weight"):
            assert torch.allclose(rows[k][j], a * full[k][j] + (1 - a) * start[k][j], atol=1e-6), (k, j)
    with pytest.raises(ValueError, match="row_interpolate"):
        train_router(ds, None, pool, cfg, progress=False, init_from=parent, row_interpolate=np.array([1.0]))
    with pytest.raises(ValueError, match="interpolate"):
        train_router(ds, None, pool, cfg, progress=False, init_from=parent, interpolate=0.0)


def test_soup_averages_fine_tunes_from_the_same_start(tiny_trained_dir, tiny_data_file, tiny_pool_file,
                                                     monkeypatch):
    """soup=N trains N fine-tunes from the same weights (seeds seed, seed+1, ...) and returns the mean
    of their weights, before the interpolation toward the parent."""
    import neural_router.training.trainer as T

    parent = RouterModel.from_pretrained(tiny_trained_dir)
    pool, ds = _tiny(tiny_data_file, tiny_pool_file)
    runs = []
    real_fit = T._fit

    def spy(model, *a, **kw):
        runs.append({"start": {k: v.clone() for k, v in model.state_dict().items()}, "seed": a[4]})
        state, hist = real_fit(model, *a, **kw)
        runs[-1]["end"] = {k: v.clone() for k, v in state.items()}
        return state, hist

    monkeypatch.setattr(T, "_fit", spy)
    cfg = TrainConfig(**{**CFG, "epochs": 2, "soup": 3, "seed": 7})
    soup, _, hist = train_router(ds, None, pool, cfg, progress=False, init_from=parent, interpolate=0.5)
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


def test_train_command_soup_reaches_the_config_and_the_model_card(tiny_data_file, tiny_pool_file,
                                                                  tiny_train_config, tmp_path, monkeypatch):
    import neural_router.training.train as tr
    from neural_router.cli import main as cli_main

    seen = {}
    monkeypatch.setattr(tr, "run_train", lambda data, out, cfg, pool, over: seen.update(over) or Path(out))
    assert cli_main(["train", "--data", "d.jsonl", "--output", str(tmp_path / "x"), "--soup", "2", "--no-eval"]) == 0
    assert seen["soup"] == 2
    monkeypatch.undo()
    out = tr.run_train([str(tiny_data_file)], tmp_path / "r", tiny_train_config, tiny_pool_file,
                       {"soup": 2, "epochs": 1}, encoder_config=tiny_encoder_config(), progress=False)
    tm = json.loads((out / "training_metrics.json").read_text())
    assert tm["config"]["soup"] == 2 and [h["run"] for h in tm["history"]] == [1, 2]
    assert "over a soup of 2 fine-tunes" in (out / "README.md").read_text()


def test_calibrate_quality_bias_moves_mean_predictions_toward_the_scores():
    rng = np.random.default_rng(0)
    n = 400
    pred = np.column_stack([np.full(n, 0.6), np.full(n, 0.6), rng.uniform(0.2, 0.9, n), np.full(n, 0.5)])
    scores = np.column_stack([np.arange(n) % 5 != 0,              # 0.8 in every 5 rows
                              rng.random(n) < 0.6, rng.random(n) < pred[:, 2],
                              np.full(n, np.nan)]).astype(np.float32)
    scores[::3, 1] = np.nan                                       # a masked cell is not a failure
    w = np.ones_like(scores)
    d = calibrate_quality_bias(scores, pred, w, pseudo_count=0.0)
    shifted = lambda j: 1 / (1 + np.exp(-(np.log(pred[:, j] / (1 - pred[:, j])) + d[j])))  # noqa: E731
    assert shifted(0).mean() == pytest.approx(np.nanmean(scores[:, 0]), abs=1e-4)   # exact without a prior
    assert abs(shifted(1).mean() - np.nanmean(scores[:, 1])) < 1e-4
    assert abs(d[2]) < 0.15                                       # already calibrated: about no shift
    assert d[3] == 0.0                                            # never observed: untouched
    # the pseudo-observations shrink the shift, the more the fewer cells a model has
    few = calibrate_quality_bias(scores[:20], pred[:20], w[:20], pseudo_count=20.0)
    many = calibrate_quality_bias(scores, pred, w, pseudo_count=20.0)
    assert 0 < few[0] < calibrate_quality_bias(scores[:20], pred[:20], w[:20], 0.0)[0]
    assert many[0] == pytest.approx(d[0], rel=0.1)
    # weights count: a zero weight drops a cell, doubling all weights halves the prior's pull
    w0 = w.copy()
    w0[:200, 0] = 0
    assert calibrate_quality_bias(scores, pred, w0, 0.0)[0] == pytest.approx(
        calibrate_quality_bias(scores[200:], pred[200:], w[200:], 0.0)[0], abs=1e-6)
    assert calibrate_quality_bias(scores[:20], pred[:20], 2 * w[:20], 20.0)[0] == pytest.approx(
        calibrate_quality_bias(scores[:20], pred[:20], w[:20], 10.0)[0], abs=1e-6)
    with pytest.raises(ValueError, match="bias_calibration"):
        calibrate_quality_bias(scores, pred, w, -1.0)


def test_train_router_bias_calibration_shifts_only_the_quality_bias(tiny_trained_dir, tiny_data_file,
                                                                   tiny_pool_file):
    parent = RouterModel.from_pretrained(tiny_trained_dir)
    pool, ds = _tiny(tiny_data_file, tiny_pool_file)
    cfg = TrainConfig(**{**CFG, "epochs": 1})

    def fit(k):
        torch.manual_seed(0)
        return train_router(ds, None, pool, cfg, progress=False, init_from=parent, interpolate=0.5,
                            bias_calibration=k)

    (plain, _, _), (cal, tok, hist) = fit(None), fit(0.0)
    a, b = plain.state_dict(), cal.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == ["quality.bias"]
    shift = hist[-1]["quality_bias_shift"]
    assert len(hist) == 1 and set(shift) == set(ds.models)
    assert np.allclose(b["quality.bias"] - a["quality.bias"], [shift[m] for m in ds.models], atol=1e-3)
    # after the shift each model's mean predicted quality on its training cells is its mean score
    p = predict_router(cal, tok, pool, ds.prompts).quality
    for j in range(len(ds.models)):
        obs = np.isfinite(ds.scores[:, j])
        assert p[obs, j].mean() == pytest.approx(ds.scores[obs, j].mean(), abs=0.01)
    with pytest.raises(ValueError, match="bias_calibration"):   # refused before any training
        fit(-1.0)


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
    pool, ds = _tiny(tiny_data_file, tiny_pool_file)
    ds = ds.subset(np.arange(12))
    mean = np.nanmean(ds.scores, 0)

    def fit(init):
        cfg = TrainConfig(**{**CFG, "epochs": 1, "lr_head": 1e-6, "init_quality_bias": init})
        model, tok, _ = train_router(ds, None, pool, cfg, encoder_config=tiny_encoder_config(), progress=False)
        return predict_router(model, tok, pool, ds.prompts).quality.mean(0)

    # a few optimizer steps leave the heads where they start: near 0.5 from 0, at the means with the option
    assert np.abs(fit(True) - mean).max() < 0.05 < np.abs(fit(False) - mean).max()


def test_fit_head_mixture_starts_at_the_average_model_and_learns_which_models_the_target_follows():
    rng = np.random.default_rng(0)
    n, k = 3000, 4
    x = rng.normal(0.5, 1.5, size=(n, k))
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * x[:, 0] - 0.4)))).astype(np.float32)   # follows model 0
    w = np.ones(n)
    alpha, c = fit_head_mixture(x, y, w, pseudo_count=1.0)
    assert alpha == pytest.approx([1.5, 0, 0, 0], abs=0.15) and c == pytest.approx(-0.4, abs=0.15)
    # a strong prior keeps the cold-start row: the average of the known rows, shifted by c0
    alpha, c = fit_head_mixture(x[:20], y[:20], w[:20], pseudo_count=1e6, c0=0.7)
    assert alpha == pytest.approx([0.25] * 4, abs=1e-3) and c == pytest.approx(0.7, abs=1e-3)
    # the fewer cells, the nearer the prior
    few = fit_head_mixture(x[:30], y[:30], w[:30], pseudo_count=20.0)[0]
    many = fit_head_mixture(x, y, w, pseudo_count=20.0)[0]
    assert abs(few[0] - 0.25) < abs(many[0] - 0.25)
    # a zero weight drops a cell
    w0 = w.copy()
    w0[:1000] = 0
    a0, c0 = fit_head_mixture(x, y, w0, 5.0)
    a1, c1 = fit_head_mixture(x[1000:], y[1000:], w[1000:], 5.0)
    assert np.allclose(a0, a1, atol=1e-6) and c0 == pytest.approx(c1, abs=1e-6)


def test_train_router_head_transfer_rewrites_only_the_target_row_as_a_mixture(tiny_trained_dir, tiny_data_file,
                                                                             tiny_pool_file):
    parent = RouterModel.from_pretrained(tiny_trained_dir)
    pool, ds = _tiny(tiny_data_file, tiny_pool_file)
    cfg = TrainConfig(**{**CFG, "epochs": 1})
    target = ds.models[-1]

    def fit(**kw):
        torch.manual_seed(0)
        return train_router(ds, None, pool, cfg, progress=False, init_from=parent, interpolate=0.5, **kw)

    (plain, _, _), (moved, tok, hist) = fit(), fit(head_transfer=5.0, head_transfer_models=(target,))
    a, b = plain.state_dict(), moved.state_dict()
    assert sorted(k for k in a if not torch.equal(a[k], b[k])) == ["quality.bias", "quality.weight"]
    j = ds.models.index(target)
    others = [i for i in range(len(ds.models)) if i != j]
    assert torch.equal(a["quality.weight"][others], b["quality.weight"][others])
    assert torch.equal(a["quality.bias"][others], b["quality.bias"][others])
    mix = hist[-1]["head_transfer"][target]
    assert mix["n"] == int(np.isfinite(ds.scores[:, j]).sum())
    alpha = torch.tensor([mix["weights"][ds.models[i]] for i in others])
    # the target's logit on any prompt is the mixture of the others' logits plus the fitted bias
    p = predict_router(moved, tok, pool, ds.prompts).quality
    logit = np.log(p / (1 - p))
    assert np.allclose(logit[:, j], logit[:, others] @ alpha.numpy() + mix["bias"], atol=2e-3)
    with pytest.raises(ValueError, match="head_transfer_models"):   # refused before any training
        fit(head_transfer=5.0, head_transfer_models=("no-such-model",))
    with pytest.raises(ValueError, match="head_transfer"):
        fit(head_transfer=0.0, head_transfer_models=(target,))


def test_row_shares_follow_the_parents_evidence():
    seen = {"a": 100, "b": 100, "c": 0}
    shares = row_shares(["a", "b", "c", "d"], np.array([100, 400, 50, 0]), seen, 0.5)
    # a: nothing new -> base; b: 3/4 new; c: parent never saw it -> all; d: no outcomes -> base
    assert np.allclose(shares, [0.5, 0.75, 1.0, 0.5])
    assert np.allclose(row_shares(["a"], np.array([10]), {}, 0.5), [0.5])   # old parent: base share


def test_activation_cache_matches_plain_predictions(tiny_trained_dir):
    from transformers import AutoTokenizer

    model = RouterModel.from_pretrained(tiny_trained_dir)
    tok = AutoTokenizer.from_pretrained(str(tiny_trained_dir))
    pool = ModelPool.from_yaml(tiny_trained_dir / "models.yaml")
    cfg = TrainConfig(**CFG)
    prompts = ["python function class loop", "hello weather", "math question 3: solve equation sum"]
    cache = ActivationCache()
    plain = predict_router(model, tok, pool, prompts)
    cached = predict_router(model, tok, pool, prompts, cfg, cache)
    again = predict_router(model, tok, pool, prompts[:2], cfg, cache)
    assert np.allclose(plain.quality, cached.quality, atol=2e-3)
    assert np.allclose(plain.cost_usd, cached.cost_usd, rtol=2e-2)
    assert np.allclose(again.quality, cached.quality[:2], atol=1e-6)
    assert cache.misses == 3 and cache.hits == 2 and len(cache) == 3
    other = RouterModel.from_encoder_config(model.config, tiny_encoder_config())  # other frozen weights
    predict_router(other, tok, pool, prompts[:1], cfg, cache)
    assert cache.misses == 4


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


def _preds(quality: np.ndarray, models: list[str]) -> Predictions:
    n, m = quality.shape
    return Predictions(models, quality, np.tile([0.02, 0.002, 0.0002], (n, 1)),
                       np.tile([900.0, 400.0, 150.0], (n, 1)), np.full((n, m), 50.0),
                       np.full(n, 20), np.zeros(n, bool))


def test_policy_replay_honours_logged_modalities_and_constraints():
    """Off-policy estimates replay the router's policy with what each request carried: an image goes
    only to a model that takes images, denied/allowed models and soft limits apply as they did live."""
    models = ["big", "mid", "small"]
    pool = ModelPool.model_validate(TINY_POOL)
    pred = _preds(np.tile([0.5, 0.9, 0.8], (5, 1)), models)   # mid: best quality
    w = (np.ones(5), np.zeros(5), np.zeros(5))
    ctx = [{}, {"has_image": True}, {"constraints": {"denied_models": ["mid"]}},
           {"constraints": {"allowed_models": ["big", "unknown-model"]}},
           {"constraints": {"max_cost_usd": 0.001}}]
    chosen = [models[j] for j in policy_probs(pred, models, pool, w, ctx).argmax(1)]
    assert chosen == ["mid", "big", "small", "big", "small"]
    assert [models[j] for j in policy_probs(pred, models, pool, w).argmax(1)] == ["mid"] * 5


def test_off_policy_comparison_and_verdict():
    """Logged epsilon-greedy traffic from a bad policy; the router that knows the truth wins under
    IPS and DR, the one that does not is not promoted."""
    rng = np.random.default_rng(0)
    models = ["big", "mid", "small"]
    pool = ModelPool.model_validate(TINY_POOL)
    n = 1500
    topic = rng.integers(0, 3, n)
    truth = np.array([list(TOPICS[t]) for t in TOPICS])[topic]          # success probability [n, 3]
    logged_q = np.tile([0.5, 0.5, 0.9], (n, 1))                          # believes 'small' always wins
    logged = []
    for i in range(n):
        greedy = 2
        probs = np.full(3, 0.3 / 3)
        probs[greedy] += 0.7
        a = rng.choice(3, p=probs)
        logged.append({"model": models[a], "propensity": float(probs[a]),
                       "score": float(rng.random() < truth[i, a]), "cost_usd": [0.02, 0.002, 0.0002][a],
                       "latency_ms": None, "exploration": "epsilon_greedy(0.3)",
                       "predictions": {m: {"quality": float(logged_q[i, j]), "cost_usd": [0.02, 0.002, 0.0002][j],
                                           "latency_ms": [900.0, 400.0, 150.0][j]} for j, m in enumerate(models)},
                       "preferences": {"quality_weight": 1.0, "cost_weight": 0.1, "latency_weight": 0.0}})
    good, bad = _preds(truth.astype(float), models), _preds(logged_q, models)
    res = compare_on_logs(logged, models, bad, good, pool, None, n_boot=200)
    assert res["n"] == n and 0.5 < res["changed_decisions"] <= 1
    assert res["difference"]["ips"]["ci_low"] > 0 and res["difference"]["dr"]["ci_low"] > 0
    assert res["new"]["dr"]["value"] > res["current"]["dr"]["value"]
    # both estimates land near the true values of the two greedy policies
    u_true = truth - 0.1 * np.array([0.02, 0.002, 0.0002]) / 0.02
    value = lambda q: float(u_true[np.arange(n), (q - 0.1 * np.array([1, 0.1, 0.01])).argmax(1)].mean())  # noqa: E731
    assert abs(res["current"]["ips"]["value"] - value(logged_q)) < 0.04
    assert abs(res["new"]["dr"]["value"] - value(truth)) < 0.04
    assert abs(res["logging"]["value"] - value(logged_q)) > 0.05    # the logger explored: not the same
    assert promotion_verdict(res, 0.0)[0] is True
    # the DR reward model stays on the reward's scale when a router's cost estimates drift
    drift = _preds(truth.astype(float), models)
    drift.cost_usd *= 100                      # same choices (utility is scale-free in cost) ...
    res_d = compare_on_logs(logged, models, bad, drift, pool, None, n_boot=0)
    assert res_d["new"]["dr"]["value"] == pytest.approx(res["new"]["dr"]["value"], abs=1e-9)  # ... same value
    assert promotion_verdict(res, 10.0)[0] is False                      # min_improvement gates it
    assert promotion_verdict(res, 0.0, require_ci=True)[0] is True         # significant as well
    wide = {"n": 10, "difference": {m: {"value": 0.05, "ci_low": -0.02} for m in ("ips", "dr", "dm")}}
    assert promotion_verdict(wide, 0.0)[0] is True and promotion_verdict(wide, 0.0, require_ci=True)[0] is False
    back = compare_on_logs(logged, models, good, bad, pool, None, n_boot=200)
    assert promotion_verdict(back, 0.0)[0] is False
    assert promotion_verdict({"n": 0}, 0.0) == (False, "no held-out logged requests to evaluate on")
    # the DR reward model is shared (the mean of both routers' predictions): swapping the routers
    # flips the sign of the DR difference, so neither router is judged by its own predictions
    assert back["difference"]["dr"]["value"] == pytest.approx(-res["difference"]["dr"]["value"], abs=1e-9)
    # promote_on picks the estimators that must all agree
    split = {"n": 10, "difference": {"ips": {"value": -0.01, "ci_low": -0.1}, "snips": {"value": 0.02, "ci_low": -0.1},
                                     "dr": {"value": 0.03, "ci_low": 0.01}, "dm": {"value": 0.01, "ci_low": 0.0}}}
    ok, why = promotion_verdict(split, 0.0)                                          # default: DM alone
    assert ok and "DM +0.0100" in why and "IPS" not in why and "DR" not in why
    assert promotion_verdict(split, 0.0, promote_on="dr")[0] is True
    assert promotion_verdict(split, 0.0, promote_on="ips,dr")[0] is False           # stricter: IPS as well
    assert promotion_verdict(split, 0.0, require_ci=True, promote_on=("snips", "dr"))[0] is False
    with pytest.raises(ValueError, match="promote_on: 'dmx' must name one or more of ips, snips, dr, dm"):
        promotion_verdict(split, 0.0, promote_on="dmx")
    with pytest.raises(ValueError, match=r"no 'snips' estimate \(it has dm\)"):
        promotion_verdict({"n": 5, "difference": {"dm": {"value": 0.1}}}, 0.0, promote_on="snips")
    assert set(res["difference"]) == {"ips", "snips", "dr", "dm"}
    split["difference"]["dm"] = {"value": -0.01, "ci_low": -0.02}
    assert promotion_verdict(split, 0.0)[0] is False and promotion_verdict(split, 0.0, promote_on="dr")[0]


def test_reward_model_calibration_moves_the_direct_method_toward_the_outcomes():
    """Both routers under-predict 'big' (a new member at its prior, say): the uncalibrated direct
    method prefers the router that avoids it; calibrated on logged outcomes of 'big' it prefers the
    router that sends the hard prompts there. A shift common to all models changes no difference."""
    models = ["big", "mid", "small"]
    pool = ModelPool.model_validate(TINY_POOL)
    n = 40
    truth = np.tile([0.95, 0.5, 0.45], (n, 1))
    cur = _preds(np.tile([0.3, 0.5, 0.45], (n, 1)), models)        # sends everything to mid
    new = _preds(np.tile([0.62, 0.5, 0.45], (n, 1)), models)       # sends everything to big
    logged = [{"model": models[i % 3], "propensity": 1 / 3, "score": float(truth[i, i % 3]), "cost_usd": None,
               "latency_ms": None, "preferences": {"quality_weight": 1.0, "cost_weight": 0.1},
               "predictions": {m: {"quality": 0.5, "cost_usd": [0.02, 0.002, 0.0002][j],
                                   "latency_ms": [900.0, 400.0, 150.0][j]} for j, m in enumerate(models)}}
              for i in range(n)]
    plain = compare_on_logs(logged, models, cur, new, pool, None, n_boot=0)
    assert plain["difference"]["dm"]["value"] < 0                  # mean of the two: big at 0.46
    shift = reward_model_shift(logged, models, cur, new, strength=0.0)
    assert shift == pytest.approx([0.95 - 0.46, 0.0, 0.0], abs=1e-9)
    calibrated = compare_on_logs(logged, models, cur, new, pool, None, n_boot=0, quality_shift=shift)
    assert calibrated["difference"]["dm"]["value"] > 0.3
    common = compare_on_logs(logged, models, cur, new, pool, None, n_boot=0, quality_shift=np.full(3, 0.02))
    assert common["difference"]["dm"]["value"] == pytest.approx(plain["difference"]["dm"]["value"])
    # shrinkage pulls a model seen on few requests toward the mean residual of all of them
    few = reward_model_shift(logged[:4], models, cur, new, strength=10.0)   # big twice, mid, small
    overall = (2 * (0.95 - 0.46) + 0 + 0) / 4
    assert few[0] == pytest.approx((2 * (0.95 - 0.46) + 10 * overall) / 12)


def _log_traffic(store: FeedbackStore, router_dir, n: int, epsilon: float, seed: int = 1):
    """Route synthetic prompts with the tiny router, epsilon-greedy, and add the true outcome."""
    from neural_router import Router
    from neural_router.feedback.offpolicy import epsilon_greedy_probs, sample_actions, utilities

    rng = random.Random(seed)
    router = Router.from_pretrained(router_dir)
    prompts, topics = [], []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        words = WORDS[topic].split()
        prompts.append(f"{topic} logged {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(5, 20))))
        topics.append(topic)
    preds = router.predict(prompts)
    u = utilities(preds.quality, preds.cost_usd, preds.latency_ms, 1.0, 0.3, 0.0)
    a, p = sample_actions(epsilon_greedy_probs(u, epsilon), seed)
    for i, prompt in enumerate(prompts):
        model = router.models[a[i]]
        store.log_decision(request_id=f"r{seed}-{i}", prompt=prompt, model=model, predictions=preds.row(i),
                           router_version=router.version, propensity=float(p[i]),
                           preferences={"quality_weight": 1.0, "cost_weight": 0.3},
                           exploration=f"epsilon_greedy({epsilon})", input_tokens=int(preds.input_tokens[i]))
        prob = 0.9 if model == "newbie" else TOPICS[topics[i]][["big", "mid", "small"].index(model)]
        store.add_feedback(f"r{seed}-{i}", float(rng.random() < prob), cost_usd=float(preds.cost_usd[i, a[i]]))


def test_run_update_end_to_end(tiny_trained_dir, tiny_pool_file, tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'fb.db'}"
    with FeedbackStore.from_url(url) as store:
        _log_traffic(store, tiny_trained_dir, 120, 0.5)
    pool = yaml.safe_load(tiny_pool_file.read_text())
    pool["models"].append({"name": "newbie", "input_price_per_1m": 0.5, "output_price_per_1m": 1.0})
    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(yaml.safe_dump(pool))
    parent_version = json.loads((tiny_trained_dir / "router_config.json").read_text())["version"]

    res = run_update(tiny_trained_dir, url, tmp_path / "routers", preferences={"cost_weight": 0.3},
                     pool_file=pool_file, overrides={"epochs": 2}, n_boot=100, head_refit=None)   # fine-tune
    out = tmp_path / "routers" / res["version"]
    assert res["router_dir"] == str(out) and res["version"].startswith(parent_version.split("+")[0] + "+")
    assert res["parent_version"] == parent_version and res["new_models"] == ["newbie"]
    assert res["n_logged"] == 120 and res["n_logged_train"] + res["n_logged_val"] + res["n_holdout"] == 120
    assert res["n_logged_val"] > 0
    assert 15 < res["n_holdout"] < 60 and res["n_original"] > 0
    rc = json.loads((out / "router_config.json").read_text())
    assert rc["models"] == ["big", "mid", "small", "newbie"] and rc["version"] == res["version"]
    tm = json.loads((out / "training_metrics.json").read_text())
    assert tm["parent_version"] == parent_version and tm["data"]          # original data carried on
    assert tm["update"]["normalize_weights"] is True  # the default: self-normalised weights
    assert tm["update"]["bias_calibration"] is None   # off by default
    # head transfer is on by default for the new model, but with no outcome of it yet its row stays
    # at the cold-start prior
    assert tm["update"]["head_transfer"] == 20.0 and tm["update"]["head_transfer_models"] == ["newbie"]
    assert not tm["history"][-1].get("head_transfer")
    assert tm["update"]["weights_of_chosen"]["max"] > 1.0
    rows = tm["update"]["row_interpolate"]   # >= 0.5; more where the parent saw few of the outcomes
    assert set(rows) == {"big", "mid", "small", "newbie"} and all(0.5 <= a <= 1 for a in rows.values())
    assert rows["newbie"] == 0.5                                       # no outcomes: the base share
    assert tm["summary"]["observed_per_model"]["newbie"] == 0
    promo = json.loads((out / "promotion.json").read_text())
    assert promo["n"] == res["n_holdout"] and isinstance(promo["promote"], bool)
    card = (out / "README.md").read_text()   # the model card says where the version came from and its verdict
    assert f"updated from version `{tm['parent_version']}`" in card and "## Promotion check" in card
    assert promo["reason"] in card and "inf" not in card
    for who in ("current", "new"):
        for m in ("ips", "snips", "dr"):
            e = promo[who][m]
            assert e["ci_low"] <= e["value"] <= e["ci_high"] and e["n"] == promo["n"]
    d = promo["difference"]
    assert promo["promote"] == (d["dm"]["value"] > 0)               # the default: the direct method decides
    by_clip = promo["dr_difference_by_clip"]                        # the verdict's sensitivity
    assert set(by_clip) == {"0", "1", "3", "10", "30"} and all(np.isfinite(list(by_clip.values())))
    assert promo["preferences"]["cost_weight"] == 0.3
    # the reward model was calibrated on the logs the update trained on (the default)
    rm = promo["reward_model"]
    assert rm["calibration"] == 10.0 and rm["n_calibration"] == res["n_logged"] - res["n_holdout"]
    assert set(rm["quality_shift"]) == {"big", "mid", "small", "newbie"} and "dm" in d

    from neural_router import Router

    r = Router.from_pretrained(out)
    assert r.models == ["big", "mid", "small", "newbie"]
    q = r.predict(["math question 5: integral derivative solve prime"]).quality
    assert q.shape == (1, 4) and 0 < q[0, 3] < 1

    # a second update chains from the first (its training_metrics name the original data)
    with FeedbackStore.from_url(url) as store:
        _log_traffic(store, out, 30, 0.5, seed=2)
    from neural_router.training.update import main

    assert main(["--router", str(out), "--feedback", url, "--output", str(tmp_path / "routers"),
                 "--min-improvement", "1e9", "--epochs", "1", "--cost-weight", "0.3",
                 "--head-transfer", "5", "--head-transfer-models", "newbie"]) == 0
    printed = capsys.readouterr().out
    res2 = json.loads(printed[printed.index("{"): printed.rindex("}") + 1])
    assert "(not above min_improvement 1e+09)" in printed
    assert res2["parent_version"] == res["version"] and res2["promote"] is False
    promo2 = json.loads((tmp_path / "routers" / res2["version"] / "promotion.json").read_text())
    assert promo2["min_improvement"] == 1e9 and promo2["preferences"]["cost_weight"] == 0.3
    tm2 = json.loads((tmp_path / "routers" / res2["version"] / "training_metrics.json").read_text())
    assert tm2["lineage"] == [parent_version, res["version"]]
    # the new member's head was rewritten as a mixture of the known models' heads, fitted to its outcomes
    assert tm2["update"]["head_transfer"] == 5.0 and tm2["update"]["head_transfer_models"] == ["newbie"]
    mix = tm2["history"][-1]["head_transfer"]["newbie"]
    assert mix["n"] == tm2["summary"]["observed_per_model"]["newbie"] > 0
    assert set(mix["weights"]) == {"big", "mid", "small"}
    # by default the update refits the quality head alone, keeping all of it (no interpolation)
    assert tm2["update"]["head_refit"] == 30.0 and tm2["update"]["interpolate"] == 1.0
    assert tm2["history"][0]["head_refit"]["observed"] > 0 and tm["update"]["head_refit"] is None
    w1, w2 = (RouterModel.from_pretrained(d).state_dict() for d in (out, tmp_path / "routers" / res2["version"]))
    assert sorted(k for k in w1 if not torch.equal(w1[k], w2[k])) == ["quality.bias", "quality.weight"]

    # the candidate was not promoted: a third update fine-tunes it further (its lineage keeps
    # learning) while the check still compares with the router that serves (the first update)
    out2 = tmp_path / "routers" / res2["version"]
    assert main(["--router", str(out2), "--compare-with", str(out), "--feedback", url,
                 "--output", str(tmp_path / "routers"), "--epochs", "1", "--cost-weight", "0.3",
                 "--head-transfer", "5"]) == 0
    printed = capsys.readouterr().out
    res3 = json.loads(printed[printed.index("{"): printed.rindex("}") + 1])
    promo3 = json.loads((tmp_path / "routers" / res3["version"] / "promotion.json").read_text())
    assert res3["parent_version"] == res2["version"]
    assert promo3["current_version"] == res["version"] and promo3["trained_from"] == res2["version"]
    assert promo3["n"] > 0 and "dr" in promo3["difference"]       # the serving router was predicted
    assert promo2["current_version"] == promo2["trained_from"] == res["version"]   # the default
    tm3 = json.loads((tmp_path / "routers" / res3["version"] / "training_metrics.json").read_text())
    assert tm3["update"]["head_transfer_models"] == ["newbie"]   # inherited from the parent's update


def test_share_shift_and_largest_scale():
    a = np.eye(3)[[0, 0, 1, 2]]                 # shares 0.5, 0.25, 0.25
    assert share_shift(a, a) == 0.0
    assert share_shift(a, a[[1, 0, 3, 2]]) == 0.0            # requests swap models: no share moves
    assert share_shift(a, np.eye(3)[[1, 1, 1, 1]]) == pytest.approx(0.75)
    assert share_shift(a[:0], a[:0]) == 0.0
    calls = []

    def shift_at(t):
        calls.append(t)
        return 0.8 * t

    t, s, full = largest_scale(shift_at, 0.3)
    assert full == 0.8 and s == pytest.approx(0.8 * t) and s <= 0.3
    assert 0.375 - 2 ** -7 <= t <= 0.375 and len(calls) == 8       # 1 + 7 bisection steps
    assert largest_scale(shift_at, 0.9) == (1.0, 0.8, 0.8)         # inside the region: unchanged
    assert largest_scale(lambda t: 1.0, 0.5)[:2] == (0.0, 0.0)     # any move too far: no change


def test_parent_state_like_keeps_a_new_members_rows(tiny_trained_dir, tiny_data_file, tiny_pool_file):
    from dataclasses import replace

    from neural_router.training.update import align_models

    parent = RouterModel.from_pretrained(tiny_trained_dir)
    _, ds = _tiny(tiny_data_file, tiny_pool_file)
    rc = parent.config
    models = ["newbie"] + list(rc.models)[::-1]      # a new member first, the known models reordered
    rc = replace(rc, models=models, binary=[True] + rc.binary[::-1],
                 latency_learned=[False] + rc.latency_learned[::-1], cost_scale=[1.0] + rc.cost_scale[::-1],
                 default_output_tokens=[99.0] + rc.default_output_tokens[::-1])
    child = model_from_parent(rc, parent, align_models(ds, models))
    with torch.no_grad():
        for p in child.parameters():
            p.add_(1.0)                               # an update that moved every weight
    start = parent_state_like(parent, child)
    assert torch.equal(start["trunk.1.weight"], parent.trunk[1].weight)
    for j, m in enumerate(models[1:], 1):             # known rows by name, from the parent
        i = parent.config.models.index(m)
        assert torch.equal(start["quality.weight"][j], parent.quality.weight[i])
        assert torch.equal(start["latency.bias"][j], parent.latency.bias[i])
    assert torch.equal(start["quality.weight"][0], child.quality.weight[0])   # the new member: its own


def test_run_update_max_shift_caps_the_traffic_an_update_moves(tiny_trained_dir, tmp_path):
    from neural_router import Router

    url = f"sqlite:///{tmp_path / 'fb.db'}"
    with FeedbackStore.from_url(url) as store:
        _log_traffic(store, tiny_trained_dir, 120, 0.5)
        prompts = [d.prompt for d, _ in store.iter_logged(chosen_only=True)]
    kw = dict(preferences={"cost_weight": 0.3}, overrides={"epochs": 3, "lr_head": 0.05}, n_boot=50,
              interpolate=1.0, head_refit=None)   # a fine-tune that moves a lot of traffic
    free = run_update(tiny_trained_dir, url, tmp_path / "free", **kw)
    capped = run_update(tiny_trained_dir, url, tmp_path / "capped", max_shift=0.02, **kw)
    assert free["trust_region"] is None
    tr = capped["trust_region"]
    tm = json.loads((Path(capped["router_dir"]) / "training_metrics.json").read_text())
    assert tm["update"]["trust_region"] == tr and tr["n_requests"] == 120 and tr["max_shift"] == 0.02

    def routed(d):
        r = Router.from_pretrained(d)
        w = tuple(np.full(len(prompts), x) for x in (1.0, 0.3, 0.0))
        return policy_probs(r.predict(prompts), r.models, r.pool, w)

    parent = routed(tiny_trained_dir)
    moved = share_shift(parent, routed(free["router_dir"]))
    assert moved > 0.02                                  # the unconstrained update moves traffic ...
    assert tr["shift_unscaled"] == pytest.approx(moved, abs=1e-9) and tr["scale"] < 1.0
    assert share_shift(parent, routed(capped["router_dir"])) == pytest.approx(tr["shift"])   # ... the capped one
    assert tr["shift"] <= 0.02                                                               # no more than allowed
    with pytest.raises(ValueError, match=r"max_shift must be in \(0, 1\]"):
        run_update(tiny_trained_dir, url, tmp_path / "out", max_shift=0.0)


def test_run_update_errors(tiny_trained_dir, tmp_path):
    with pytest.raises(ValueError, match="empty.db does not exist"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out")
    assert not (tmp_path / "empty.db").exists()
    FeedbackStore.from_url(tmp_path / "empty.db").close()
    with pytest.raises(ValueError, match="no logged outcomes"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out")
    with pytest.raises(RouterLoadError, match="model.safetensors is missing"):
        run_update(tmp_path, tmp_path / "empty.db", tmp_path / "out")
    with pytest.raises(RouterLoadError, match="compare_with: .* model.safetensors is missing"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", compare_with=tmp_path)
    with pytest.raises(RouterLoadError, match="nope does not exist"):
        run_update(tmp_path / "nope", tmp_path / "empty.db", tmp_path / "out")
    import shutil

    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_trained_dir, no_tok)
    for f in no_tok.glob("tokenizer.json"):
        f.unlink()
    with pytest.raises(RouterLoadError, match="the tokenizer's vocabulary is missing"):
        run_update(no_tok, tmp_path / "empty.db", tmp_path / "out")
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "router.onnx").write_bytes(b"")
    with pytest.raises(RouterLoadError, match="is an ONNX export, not a trained router folder"):
        run_update(tmp_path / "onnx", tmp_path / "empty.db", tmp_path / "out")
    with pytest.raises(ValueError, match="holdout_fraction"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", holdout_fraction=1.0)
    with pytest.raises(ValueError, match=r"log_val_fraction must be in \[0, 1\)"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", log_val_fraction=1.0)
    with pytest.raises(ValueError, match="promote_on: 'ips,foo'"):   # before any training starts
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", promote_on="ips,foo")
    with pytest.raises(ValueError, match="interpolate must be in"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", interpolate=1.5)
    with pytest.raises(ValueError, match="head_transfer_models: 'nobody' not in the router's pool"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", head_transfer=5,
                   head_transfer_models=("nobody",))
    with pytest.raises(ValueError, match=r"head_transfer must be a finite pseudo count > 0 \(0 = off\), got -5"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", head_transfer=-5)
    with pytest.raises(ValueError, match=r"reward_calibration must be a finite pseudo count >= 0 \(None = off\)"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", reward_calibration=-1)
    with pytest.raises(ValueError, match=r"head_refit must be a finite penalty > 0 \(None = fine-tune as usual\), got 0"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", head_refit=0)
    with pytest.raises(ValueError, match="head_transfer .* is not set"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", head_transfer=0,
                   head_transfer_models=("mid",))


def test_neural_router_update_has_the_same_options_as_training_update():
    """`neural-router update` and `python -m neural_router.training.update` share one option set (pool for new
    models, weights, promotion settings), and each option reaches run_update."""
    from neural_router.cli import build_parser

    args = build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output", "o",
                                      "--pool", "p.yaml", "--raw-weights", "--clip", "3", "--require-ci",
                                      "--promote-on", "dr", "--interpolate", "1", "--bias-calibration", "20"])
    assert (args.pool, args.raw_weights, args.clip, args.require_ci, args.promote_on, args.interpolate,
            args.bias_calibration) == ("p.yaml", True, 3.0, True, "dr", 1.0, 20.0)
    args = build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output", "o"])
    assert args.raw_weights is False and args.cost_weight is None  # default: self-normalised, logged prefs
    assert args.interpolate is None and args.bias_calibration is None   # run_update decides: 1 refit, 0.5 fine-tune
    assert args.head_refit == 30.0
    assert build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output", "o",
                                      "--head-refit", "off"]).head_refit is None


def test_update_command_passes_bias_calibration_to_run_update(monkeypatch, capsys):
    import neural_router.training.update as upd
    from neural_router.cli import build_parser

    seen = {}
    monkeypatch.setattr(upd, "run_update", lambda *a, **kw: seen.update(kw))
    upd.run_from_args(build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output",
                                                 "o", "--bias-calibration", "20", "--interpolate", "0.7"]))
    assert seen["bias_calibration"] == 20.0 and seen["interpolate"] == 0.7
    assert seen["head_transfer"] == 20.0 and seen["head_transfer_models"] is None
    upd.run_from_args(build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output", "o",
                                                 "--head-transfer", "0", "--head-transfer-models", "a", "b"]))
    assert seen["head_transfer"] == 0.0 and seen["head_transfer_models"] == ("a", "b")
    assert seen["overrides"] == {"epochs": None, "soup": None}   # unset: the router's own config decides
    upd.run_from_args(build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output", "o",
                                                 "--soup", "3", "--epochs", "4"]))
    assert seen["overrides"] == {"epochs": 4, "soup": 3}
    assert seen["max_shift"] is None                               # the trust region is off by default
    upd.run_from_args(build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output", "o",
                                                 "--max-shift", "0.2"]))
    assert seen["max_shift"] == 0.2 and seen["reward_calibration"] == 10.0
    upd.run_from_args(build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output", "o",
                                                 "--reward-calibration", "off"]))
    assert seen["reward_calibration"] is None and seen["head_refit"] == 30.0   # the head refit by default
    upd.run_from_args(build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output", "o",
                                                 "--head-refit", "off", "--interpolate", "0.7"]))
    assert seen["head_refit"] is None and seen["interpolate"] == 0.7
    assert seen["log_val_fraction"] == 0.1
    upd.run_from_args(build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output", "o",
                                                 "--log-val-fraction", "0"]))
    assert seen["log_val_fraction"] == 0.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output", "o",
                                   "--reward-calibration", "lots"])
    assert "expected a number in [0, inf) or 'off', got 'lots'" in capsys.readouterr().err
    for flag, bad, interval in (("--clip", "0.5", "[1, inf)"), ("--holdout-fraction", "1", "[0, 1)"),
                                ("--max-shift", "0", "(0, 1]"), ("--head-refit", "0", "(0, inf) or 'off'"),
                                ("--interpolate", "nan", "(0, 1]")):   # refused naming the flag, before any work
        with pytest.raises(SystemExit):
            build_parser().parse_args(["update", "--router", "r", "--feedback", "f.db", "--output", "o", flag, bad])
        assert f"argument {flag}: expected a number in {interval}, got '{bad}'" in capsys.readouterr().err


def test_train_router_head_refit_changes_only_the_quality_head_deterministically(tiny_trained_dir, tiny_data_file,
                                                                                tiny_pool_file):
    parent = RouterModel.from_pretrained(tiny_trained_dir)
    pool, ds = _tiny(tiny_data_file, tiny_pool_file)
    cfg = TrainConfig(**CFG)

    def refit(k):
        model, _, hist = train_router(ds, None, pool, cfg, progress=False, init_from=parent, head_refit=k)
        return model.state_dict(), hist

    (a, hist), (b, _), (strong, _) = refit(1.0), refit(1.0), refit(1e4)
    start = parent.state_dict()
    assert sorted(k for k in a if not torch.equal(a[k], start[k])) == ["quality.bias", "quality.weight"]
    assert all(torch.equal(a[k], b[k]) for k in a)            # convex and deterministic: no seed involved
    assert hist[0]["head_refit"]["observed"] == int(np.isfinite(ds.scores).sum())
    moved = lambda s: float((s["quality.weight"] - start["quality.weight"]).norm())  # noqa: E731
    assert 0 < moved(strong) < 0.1 * moved(a)                  # a stronger penalty stays nearer the start
    # the refit head fits the data better than the start (weighted BCE on the observed cells)
    from neural_router.training.trainer import to_tensors, trunk_features
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_trained_dir)
    t = to_tensors(ds, tok, parent.config.max_length, parent.config.head_tokens)
    z = trunk_features(parent, t, cfg, 0, "cpu")
    y, obs = t.scores.nan_to_num(0.0), torch.isfinite(t.scores)

    def bce(s):
        logits = z @ s["quality.weight"].T + s["quality.bias"]
        return float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")[obs].mean())
    assert bce(a) < bce(start)
    with pytest.raises(ValueError, match="head_refit"):
        refit(0.0)
    with pytest.raises(ValueError, match="init_from"):
        train_router(ds, None, pool, cfg, progress=False, encoder_config=tiny_encoder_config(), head_refit=1.0)


def test_update_command_defaults_are_run_updates():
    """`neural-router update` with no options runs run_update's defaults (one set, neural_router.update_defaults)."""
    import inspect

    from neural_router.cli import build_parser
    from neural_router.training.promotion import parse_promote_on
    from neural_router.training.update import run_update

    args = build_parser().parse_args(["update", "--router", "r", "--feedback", "f", "--output", "o"])
    shared = [(n, p.default) for n, p in inspect.signature(run_update).parameters.items() if hasattr(args, n)]
    assert len(shared) >= 15
    for name, default in shared:
        given = getattr(args, name)
        given = parse_promote_on(given) if name == "promote_on" else given
        assert given == default, f"--{name.replace('_', '-')} defaults to {given!r}, run_update to {default!r}"
