"""The promotion check: cached predictions, the policy replay, the off-policy comparison and verdict."""

from __future__ import annotations

import numpy as np
import pytest

from neural_router.modeling.model import RouterModel
from neural_router.pool import ModelPool
from neural_router.training.activation_cache import ActivationCache, predict_router
from neural_router.training.config import TrainConfig
from neural_router.training.update.promotion import (compare_on_logs, policy_probs, promotion_verdict,
                                                     reward_model_shift)

from tests.conftest import TINY_POOL, TOPICS, tiny_encoder_config
from tests.training.helpers import CFG, preds

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


def test_policy_replay_honours_logged_modalities_and_constraints():
    """Off-policy estimates replay the router's policy with what each request carried: an image goes
    only to a model that takes images, denied/allowed models and soft limits apply as they did live."""
    models = ["big", "mid", "small"]
    pool = ModelPool.model_validate(TINY_POOL)
    pred = preds(np.tile([0.5, 0.9, 0.8], (5, 1)), models)   # mid: best quality
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
    good, bad = preds(truth.astype(float), models), preds(logged_q, models)
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
    drift = preds(truth.astype(float), models)
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
    cur = preds(np.tile([0.3, 0.5, 0.45], (n, 1)), models)        # sends everything to mid
    new = preds(np.tile([0.62, 0.5, 0.45], (n, 1)), models)       # sends everything to big
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
