"""What an update does to the weights: parent start, interpolation, bias calibration, head transfer, head refit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from neural_router.data.dataset import RoutingDataset
from neural_router.modeling.model import RouterModel
from neural_router.training.activation_cache import predict_router
from neural_router.training.config import TrainConfig
from neural_router.training.update.datasets import align_models
from neural_router.training.update.finetune import UpdateSteps, update_router
from neural_router.training.update.heads import calibrate_quality_bias, fit_head_mixture, model_from_parent

from tests.training.helpers import CFG, tiny

def test_model_from_parent_copies_known_heads_and_cold_starts_new_models(tiny_trained_dir, tiny_data_file,
                                                                 tiny_pool_file):
    parent = RouterModel.from_pretrained(tiny_trained_dir)
    _, ds = tiny(tiny_data_file, tiny_pool_file)
    models = list(parent.config.models) + ["newbie"]
    data = align_models(ds, models)
    assert isinstance(data, RoutingDataset) and np.isnan(data.scores[:, -1]).all()
    rc = RouterModel.from_pretrained(tiny_trained_dir).config
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
    pool, ds = tiny(tiny_data_file, tiny_pool_file)
    cfg = TrainConfig(**{**CFG, "epochs": 1})

    def fit(a):
        torch.manual_seed(0)
        m, _, _ = update_router(ds, None, pool, cfg, parent, UpdateSteps(interpolate=a))
        return m.state_dict()

    full, half = fit(1.0), fit(0.5)
    torch.manual_seed(0)
    rows, _, _ = update_router(ds, None, pool, cfg, parent, UpdateSteps(
        interpolate=0.5, row_interpolate=np.array([1.0, 0.5, 0.25])))
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
        update_router(ds, None, pool, cfg, parent, UpdateSteps(row_interpolate=np.array([1.0])))
    with pytest.raises(ValueError, match="interpolate"):
        update_router(ds, None, pool, cfg, parent, UpdateSteps(interpolate=0.0))


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


def test_update_bias_calibration_shifts_only_the_quality_bias(tiny_trained_dir, tiny_data_file,
                                                                   tiny_pool_file):
    parent = RouterModel.from_pretrained(tiny_trained_dir)
    pool, ds = tiny(tiny_data_file, tiny_pool_file)
    cfg = TrainConfig(**{**CFG, "epochs": 1})

    def fit(k):
        torch.manual_seed(0)
        return update_router(ds, None, pool, cfg, parent, UpdateSteps(interpolate=0.5,
                                                                          bias_calibration=k))

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


def test_update_head_transfer_rewrites_only_the_target_row_as_a_mixture(tiny_trained_dir, tiny_data_file,
                                                                             tiny_pool_file):
    parent = RouterModel.from_pretrained(tiny_trained_dir)
    pool, ds = tiny(tiny_data_file, tiny_pool_file)
    cfg = TrainConfig(**{**CFG, "epochs": 1})
    target = ds.models[-1]

    def fit(**kw):
        torch.manual_seed(0)
        return update_router(ds, None, pool, cfg, parent, UpdateSteps(interpolate=0.5, **kw))

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


def test_update_head_refit_changes_only_the_quality_head_deterministically(tiny_trained_dir, tiny_data_file,
                                                                                tiny_pool_file):
    parent = RouterModel.from_pretrained(tiny_trained_dir)
    pool, ds = tiny(tiny_data_file, tiny_pool_file)
    cfg = TrainConfig(**CFG)

    def refit(k):
        model, _, hist = update_router(ds, None, pool, cfg, parent, UpdateSteps(head_refit=k))
        return model.state_dict(), hist

    (a, hist), (b, _), (strong, _) = refit(1.0), refit(1.0), refit(1e4)
    start = parent.state_dict()
    assert sorted(k for k in a if not torch.equal(a[k], start[k])) == ["quality.bias", "quality.weight"]
    assert all(torch.equal(a[k], b[k]) for k in a)            # convex and deterministic: no seed involved
    assert hist[0]["head_refit"]["observed"] == int(np.isfinite(ds.scores).sum())
    moved = lambda s: float((s["quality.weight"] - start["quality.weight"]).norm())  # noqa: E731
    assert 0 < moved(strong) < 0.1 * moved(a)                  # a stronger penalty stays nearer the start
    # the refit head fits the data better than the start (weighted BCE on the observed cells)
    from transformers import AutoTokenizer

    from neural_router.training.batches import to_tensors
    from neural_router.training.update.heads import trunk_features

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
