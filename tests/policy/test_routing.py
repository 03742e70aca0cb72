"""Unit tests for neural_router.policy (pure numpy, fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neural_router.policy.routing import (DEFAULT_OUTPUT_TOKENS, Capabilities, Constraints, Decision,
                                  NoEligibleModelError, Preferences, calibrate_cost_weight,
                                  calibrate_threshold, pessimistic_quality,
                                  route, utility)
from neural_router.pool import ModelPool, ModelSpec
from neural_router.inference.interface import RequestFeatures

# four models: big (best, priciest, slowest), mid, small (cheapest), fast (quickest, mediocre)
MODELS = ["big", "mid", "small", "fast"]
Q = np.array([0.90, 0.80, 0.60, 0.70])
C = np.array([0.0100, 0.0030, 0.0005, 0.0020])
L = np.array([3000.0, 1500.0, 800.0, 300.0])
CAPS = Capabilities(np.array([128_000, 32_000, 8_192, 16_000]),
                    (frozenset({"text", "image", "tools"}), frozenset({"text", "tools"}),
                     frozenset({"text"}), frozenset({"text", "image"})))
TEXT = RequestFeatures()


def decide(prefs=Preferences(), cons=Constraints(), caps=CAPS, req=TEXT, tokens=100, q=Q, c=C, l=L):
    return route(MODELS, q, c, l, prefs, cons, caps, req, tokens)


# ---- preferences / constraints validation ------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(quality_weight=-1.0), dict(cost_weight=float("nan")),
                                dict(latency_weight=float("inf")), dict(cost_weight=-0.1)])
def test_invalid_preferences_raise(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        Preferences(**kw)


def test_all_zero_preferences_raise():
    with pytest.raises(ValueError, match="all 0"):
        Preferences(0.0, 0.0, 0.0)


@pytest.mark.parametrize("kw,field", [(dict(min_quality=float("nan")), "min_quality"),
                                      (dict(max_cost_usd=-1.0), "max_cost_usd"),
                                      (dict(max_latency_ms=float("inf")), "max_latency_ms"),
                                      (dict(allowed_models=()), "allowed_models"),
                                      (dict(allowed_models="big"), "allowed_models"),
                                      (dict(denied_models="big"), "denied_models")])
def test_invalid_constraints_raise(kw, field):
    with pytest.raises(ValueError, match=field):
        Constraints(**kw)


def test_constraints_lists_become_tuples():
    cons = Constraints(allowed_models=["big", "mid"], denied_models=["mid"])
    assert cons.allowed_models == ("big", "mid") and cons.denied_models == ("mid",)


def test_capabilities_validation_and_from_pool():
    with pytest.raises(ValueError, match="modalities"):
        Capabilities(np.array([100, 200]), (frozenset({"text"}),))
    with pytest.raises(ValueError, match="context_window"):
        Capabilities(np.array([0]), (frozenset({"text"}),))
    pool = ModelPool(models=(
        ModelSpec(name="a", input_price_per_1m=1, output_price_per_1m=2, context_window=4096),
        ModelSpec(name="b", input_price_per_1m=1, output_price_per_1m=2, context_window=65536,
                  modalities=("text", "image"))))
    caps = Capabilities.from_pool(pool)
    assert caps.context_window.tolist() == [4096, 65536]
    assert caps.modalities == (frozenset({"text"}), frozenset({"text", "image"}))


# ---- utility -----------------------------------------------------------------------------------

def test_utility_is_scale_free_and_matches_formula():
    p = Preferences(1.0, 0.5, 0.2)
    u = utility(Q, C, L, p)
    expected = Q - 0.5 * C / C.max() - 0.2 * L / L.max()
    np.testing.assert_allclose(u, expected)
    np.testing.assert_allclose(utility(Q, C * 1000, L / 7, p), u)  # units don't matter


def test_utility_cost_weight_meaning():
    # giving up 0.5 quality to go from the most expensive to a free model is exactly break-even
    u = utility(np.array([1.0, 0.5]), np.array([2.0, 0.0]), np.array([1.0, 1.0]), Preferences(1.0, 0.5))
    assert u[0] == pytest.approx(u[1])


def test_utility_guards_zero_max_and_works_batched():
    u = utility(Q, np.zeros(4), np.zeros(4), Preferences(1.0, 1.0, 1.0))
    np.testing.assert_allclose(u, Q)
    batch = utility(np.stack([Q, Q]), np.stack([C, 2 * C]), np.stack([L, L]), Preferences(1, 1))
    np.testing.assert_allclose(batch[0], batch[1])  # normalised per row


# ---- route: preferences steer the choice -------------------------------------------------------

def test_quality_only_picks_max_quality():
    d = decide(Preferences(1.0, 0.0, 0.0))
    assert (d.model, d.index, d.feasible, d.violated) == ("big", 0, True, [])
    assert set(d.utility) == set(MODELS)


def test_high_cost_weight_picks_cheapest():
    assert decide(Preferences(1.0, 100.0, 0.0)).model == "small"


def test_high_latency_weight_picks_fastest():
    assert decide(Preferences(1.0, 0.0, 100.0)).model == "fast"


def test_reason_mentions_choice_stats():
    d = decide()
    assert "highest utility" in d.reason and "q=0.90" in d.reason and "4 eligible" in d.reason
    assert isinstance(d, Decision)


def test_fallbacks_ranked_by_utility():
    d = decide(Preferences(1.0, 0.0, 0.0))
    assert d.fallbacks == ["mid", "fast", "small"]
    assert d.model not in d.fallbacks


# ---- route: soft constraints -------------------------------------------------------------------

def test_feasible_constraints_restrict_choice():
    d = decide(Preferences(1.0), Constraints(max_cost_usd=0.004))
    assert d.model == "mid" and d.feasible and d.violated == []
    assert "3 of 4 eligible" in d.reason
    # feasible models first by utility, then the infeasible one
    assert d.fallbacks == ["fast", "small", "big"]


def test_min_quality_and_latency_constraints():
    d = decide(Preferences(1.0, 10.0), Constraints(min_quality=0.75, max_latency_ms=2000))
    assert d.model == "mid" and d.feasible


def test_infeasible_picks_smallest_relative_violation():
    # nothing has q >= 0.95 and cost <= 0.001: big breaks cost by 9x, small breaks quality by ~37%,
    # mid breaks both (16% + 2x), fast both (26% + 1x) -> small is the best compromise
    d = decide(Preferences(1.0), Constraints(min_quality=0.95, max_cost_usd=0.001))
    assert d.model == "small" and not d.feasible
    assert d.violated == ["min_quality"]
    assert "min_quality" in d.reason and "compromise" in d.reason


def test_infeasible_reports_every_broken_constraint():
    d = decide(Preferences(1.0), Constraints(min_quality=0.99, max_latency_ms=100.0))
    assert not d.feasible
    assert d.violated == ["min_quality", "max_latency_ms"]


def test_infeasible_ties_broken_by_utility():
    q = np.array([0.5, 0.5, 0.5, 0.5])
    d = decide(Preferences(1.0, 1.0), Constraints(min_quality=0.9), q=q)  # equal shortfall everywhere
    assert d.model == "small" and d.violated == ["min_quality"]


def test_infeasible_fallbacks_ordered_by_violation():
    d = decide(Preferences(1.0), Constraints(min_quality=0.95))
    assert d.model == "big" and not d.feasible
    assert d.fallbacks == ["mid", "fast", "small"]


# ---- route: hard limits ------------------------------------------------------------------------

def test_context_window_excludes_models():
    d = decide(Preferences(1.0, 100.0), tokens=10_000)  # small (8192) cannot hold it
    assert d.model == "fast"
    assert "small" not in d.fallbacks and "small" not in d.utility
    assert "1 by context window" in d.reason


def test_default_output_tokens_count_toward_context():
    limit = int(CAPS.context_window[2])
    assert decide(Preferences(1, 100), tokens=limit - DEFAULT_OUTPUT_TOKENS).model == "small"
    assert decide(Preferences(1, 100), tokens=limit - DEFAULT_OUTPUT_TOKENS + 1).model != "small"
    big_out = RequestFeatures(max_output_tokens=4000)
    assert decide(Preferences(1, 100), req=big_out, tokens=5000).model != "small"


def test_modality_excludes_models():
    d = decide(Preferences(1.0, 100.0), req=RequestFeatures(has_image=True))
    assert d.model == "fast" and set(d.utility) == {"big", "fast"}
    d = decide(Preferences(1.0, 100.0), req=RequestFeatures(has_image=True, has_tools=True))
    assert d.model == "big" and d.fallbacks == []


def test_hard_limits_hold_under_infeasible_soft_constraints():
    # soft constraints favour small (cheapest) but it cannot hold the prompt nor see images
    cons = Constraints(max_cost_usd=0.0001, min_quality=0.99)
    for req, tokens in [(TEXT, 20_000), (RequestFeatures(has_image=True), 100)]:
        d = decide(Preferences(1.0, 5.0), cons, req=req, tokens=tokens)
        assert not d.feasible
        assert d.model != "small" and "small" not in d.fallbacks


def test_allowed_and_denied_models():
    d = decide(Preferences(1.0), Constraints(allowed_models=("mid", "small")))
    assert d.model == "mid" and set(d.fallbacks) == {"small"}
    d = decide(Preferences(1.0), Constraints(denied_models=("big",)))
    assert d.model == "mid" and "big" not in d.fallbacks
    assert "1 by denied_models" in d.reason
    d = decide(Preferences(1.0), Constraints(allowed_models=("big", "mid"), denied_models=("big",)))
    assert d.model == "mid" and d.fallbacks == []


@pytest.mark.parametrize("cons", [Constraints(allowed_models=("big", "gpt-9")),
                                  Constraints(denied_models=("gpt-9",))])
def test_unknown_model_names_raise(cons):
    with pytest.raises(ValueError, match="gpt-9") as e:
        decide(cons=cons)
    assert "known models: big, mid, small, fast" in str(e.value)
    assert not isinstance(e.value, NoEligibleModelError)


def test_no_eligible_model_error_explains_each_exclusion():
    cons = Constraints(denied_models=("big",))
    with pytest.raises(NoEligibleModelError) as e:
        decide(cons=cons, req=RequestFeatures(has_image=True), tokens=20_000)
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "denied_models: big" in msg
    assert "context window: small, fast" in msg
    assert "modality image: mid, small" in msg
    assert "20256 tokens" in msg


def test_route_rejects_bad_shapes_and_nan():
    with pytest.raises(ValueError, match="quality"):
        decide(q=Q[:3])
    with pytest.raises(ValueError, match="cost"):
        decide(c=np.array([0.1, np.nan, 0.1, 0.1]))


# ---- vectorised helpers ------------------------------------------------------------------------

def _random(n=500, m=5, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.uniform(0, 1, (n, m))
    price = np.geomspace(0.1, 30, m) / 1e6
    c = rng.integers(50, 2000, (n, 1)) * price * rng.uniform(0.5, 2, (n, m))
    lat = rng.uniform(100, 5000, (n, m))
    return q, c, lat


def test_calibrate_threshold_hits_fraction():
    s = np.random.default_rng(1).normal(size=1000)
    for f in (0.0, 0.1, 0.37, 0.5, 0.9, 1.0):
        t = calibrate_threshold(s, f)
        assert (s >= t).mean() == pytest.approx(f, abs=1e-3)
    assert calibrate_threshold(s, 0.0) == math.inf
    with pytest.raises(ValueError, match="strong_fraction"):
        calibrate_threshold(s, 1.5)
    with pytest.raises(ValueError, match="strong_fraction"):
        calibrate_threshold(s, float("nan"))


@pytest.mark.parametrize("target,fraction", [(0, 0.5), (0, 0.8), (4, 0.3), (4, 0.05), (2, 0.2)])
def test_calibrate_cost_weight_achieves_fraction(target, fraction):
    q, c, lat = _random(n=2000, seed=target)
    q[:, -1] += 0.15  # m4, the priciest, is best on average: its share falls as w grows; m0's rises
    models = [f"m{j}" for j in range(q.shape[1])]
    w = calibrate_cost_weight(q, c, lat, models, models[target], fraction)
    assert w >= 0
    u = utility(q, c, lat, Preferences(1.0, w))
    assert (u.argmax(1) == target).mean() == pytest.approx(fraction, abs=0.01)


def test_calibrate_cost_weight_with_latency_weight():
    q, c, lat = _random(n=1000, seed=5)
    models = [f"m{j}" for j in range(q.shape[1])]
    w = calibrate_cost_weight(q, c, lat, models, "m0", 0.6, latency_weight=0.3)
    u = utility(q, c, lat, Preferences(1.0, w, 0.3))
    assert (u.argmax(1) == 0).mean() == pytest.approx(0.6, abs=0.01)


def test_calibrate_cost_weight_unreachable_raises():
    q, c, lat = _random(n=300)
    q[:, 2] = -1.0  # m2 is never best and never cheapest: share is always 0
    models = [f"m{j}" for j in range(q.shape[1])]
    with pytest.raises(ValueError, match=r"between 0\.000 and 0\.000"):
        calibrate_cost_weight(q, c, lat, models, "m2", 0.5)
    with pytest.raises(ValueError, match="unknown target_model"):
        calibrate_cost_weight(q, c, lat, models, "nope", 0.5)
    with pytest.raises(ValueError, match="fraction"):
        calibrate_cost_weight(q, c, lat, models, "m0", -0.1)


# ---- pessimism ---------------------------------------------------------------------------------

def test_pessimistic_quality_marks_down_the_less_known_model_more():
    # two models predicted equally good; the router has seen 30 outcomes of one and 200 of the other
    q = np.array([[0.80, 0.80], [0.60, 0.90]])
    out = pessimistic_quality(q, np.array([30, 200]), 1.0)
    expected = q - np.sqrt(q * (1 - q) / np.array([31.0, 201.0]))
    np.testing.assert_allclose(out, expected)
    assert out[0, 0] < out[0, 1]                   # the tie now goes to the better-known model
    assert (out <= q).all() and (out >= 0).all()
    np.testing.assert_array_equal(pessimistic_quality(q, np.array([30, 200]), 0.0), q)   # off
    # no evidence at all and a large penalty: clipped at 0, never negative
    assert pessimistic_quality(np.array([0.5]), np.array([0]), 5.0)[0] == 0.0
    # a routing decision on the pessimistic qualities picks the better-known model
    caps = Capabilities(np.array([8192, 8192]), (frozenset({"text"}),) * 2)
    dec = route(["rare", "known"], out[0], np.array([1e-3, 1e-3]), np.array([500.0, 500.0]),
                Preferences(), Constraints(), caps, TEXT, 100)
    assert dec.model == "known"


@pytest.mark.parametrize("evidence, penalty, match", [
    (np.array([1, 2, 3]), 1.0, "one outcome count per model"),
    (np.array([-1, 2]), 1.0, "finite counts >= 0"),
    (np.array([1, 2]), -0.5, "penalty"),
])
def test_pessimistic_quality_rejects_bad_input(evidence, penalty, match):
    with pytest.raises(ValueError, match=match):
        pessimistic_quality(np.array([[0.5, 0.6]]), evidence, penalty)
