"""Exploration policies: propensities, hard limits, the soft-constraint switch and determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from neural_router.policy.exploration import ExplorationConfig, action_probabilities, explore, read_evidence
from neural_router.policy.routing import Capabilities, Constraints, Preferences, route
from neural_router.inference.interface import RequestFeatures

MODELS = ["big", "mid", "small", "tiny", "vision"]
Q = np.array([0.90, 0.80, 0.60, 0.30, 0.85])
C = np.array([0.010, 0.002, 0.0005, 0.0001, 0.02])
L = np.array([3000.0, 1500.0, 600.0, 300.0, 2500.0])
# tiny holds 512 tokens only; only vision takes images
CAPS = Capabilities(np.array([100_000, 16_000, 8_000, 512, 100_000]),
                    (frozenset({"text"}),) * 4 + (frozenset({"text", "image"}),))
PREFS = Preferences(quality_weight=1.0, cost_weight=0.2)


def decide(constraints: Constraints | None = None, features: RequestFeatures | None = None,
           input_tokens: int = 10, prefs: Preferences = PREFS):
    return route(MODELS, Q, C, L, prefs, constraints or Constraints(), CAPS, features or RequestFeatures(),
                 input_tokens)


def run(cfg: ExplorationConfig, n: int, seed: int = 0, constraints: Constraints | None = None,
        features: RequestFeatures | None = None, input_tokens: int = 10) -> list:
    d = decide(constraints, features, input_tokens)
    rng = np.random.default_rng(seed)
    return [explore(d, MODELS, Q, C, L, PREFS, cfg, rng, constraints) for _ in range(n)]


def test_greedy_is_the_policy_choice_with_propensity_one() -> None:
    d = decide()
    out = run(ExplorationConfig(), 50)
    assert {(e.model, e.propensity, e.policy, e.explored) for e in out} == {(d.model, 1.0, "greedy", False)}


def test_epsilon_greedy_propensities_are_exact_and_match_frequencies() -> None:
    cfg = ExplorationConfig(kind="epsilon_greedy", epsilon=0.3)
    d = decide()
    k = len(d.utility)
    probs = action_probabilities(d, MODELS, Q, C, L, PREFS, cfg)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert probs[d.model] == pytest.approx(0.7 + 0.3 / k)
    assert all(probs[m] == pytest.approx(0.3 / k) for m in d.utility if m != d.model)
    out = run(cfg, 4000, seed=1)
    for e in out:  # the logged propensity is the probability of the model actually served
        assert e.propensity == pytest.approx(probs[e.model]) and e.policy == "epsilon_greedy(0.3)"
        assert e.explored == (e.model != d.model)
    freq = Counter(e.model for e in out)
    for m, p in probs.items():
        assert freq[m] / len(out) == pytest.approx(p, abs=0.03)
    assert any(e.propensity < 1 for e in out) and sum(e.explored for e in out) > 500


def test_hard_limits_are_never_broken() -> None:
    # 1000 prompt tokens: tiny's 512-token window cannot hold them; mid is denied
    cons = Constraints(denied_models=("mid",))
    for cfg in (ExplorationConfig(kind="epsilon_greedy", epsilon=1.0),
                ExplorationConfig(kind="thompson", thompson_pseudo_count=1.0),
                ExplorationConfig(kind="epsilon_greedy", epsilon=0.5, boost_models=("tiny", "mid"),
                                  boost_epsilon=0.5)):
        seen = Counter(e.model for e in run(cfg, 600, constraints=cons, input_tokens=1000))
        assert set(seen) <= {"big", "small", "vision"} and len(seen) >= 2, (cfg, seen)
        probs = action_probabilities(decide(cons, input_tokens=1000), MODELS, Q, C, L, PREFS, cfg,
                                     np.random.default_rng(0), cons)
        assert probs["tiny"] == probs["mid"] == 0.0 and sum(probs.values()) == pytest.approx(1.0)
    # an image request: only vision is eligible, so there is nothing to explore
    out = run(ExplorationConfig(kind="epsilon_greedy", epsilon=1.0), 50,
              features=RequestFeatures(has_image=True))
    assert {(e.model, e.propensity) for e in out} == {("vision", 1.0)}


def test_soft_constraints_switch_exploration_off_unless_allowed() -> None:
    cons = Constraints(min_quality=0.75)  # met by big, mid, vision
    cfg = ExplorationConfig(kind="epsilon_greedy", epsilon=1.0)
    d = decide(cons)
    off = run(cfg, 200, constraints=cons)
    assert {(e.model, e.propensity, e.constrained, e.explored) for e in off} == {(d.model, 1.0, True, False)}

    on = run(ExplorationConfig(kind="epsilon_greedy", epsilon=1.0, explore_with_constraints=True), 600,
             constraints=cons)
    seen = Counter(e.model for e in on)
    assert set(seen) == {"big", "mid", "vision"}  # never a model predicted to break the constraint
    assert all(e.propensity == pytest.approx(1 / 3) for e in on)
    # nobody meets the constraint: the compromise is served as is
    impossible = Constraints(min_quality=0.99)
    out = run(ExplorationConfig(kind="thompson", explore_with_constraints=True), 20, constraints=impossible)
    assert {(e.model, e.propensity) for e in out} == {(decide(impossible).model, 1.0)}


def test_seeded_rng_is_deterministic() -> None:
    for cfg in (ExplorationConfig(kind="epsilon_greedy", epsilon=0.5),
                ExplorationConfig(kind="thompson", thompson_pseudo_count=3.0)):
        a, b, c = run(cfg, 100, seed=7), run(cfg, 100, seed=7), run(cfg, 100, seed=8)
        assert a == b and a != c


def test_thompson_propensities_sum_to_one_and_match_frequencies() -> None:
    cfg = ExplorationConfig(kind="thompson", thompson_pseudo_count=5.0, propensity_draws=200)
    d = decide()
    probs = action_probabilities(d, MODELS, Q, C, L, PREFS, cfg, np.random.default_rng(3), draws=20_000)
    assert sum(probs.values()) == pytest.approx(1.0) and len([p for p in probs.values() if p > 0]) >= 3
    out = run(cfg, 2000, seed=4)
    freq = Counter(e.model for e in out)
    for m in probs:
        assert freq[m] / len(out) == pytest.approx(probs[m], abs=0.04), (m, freq, probs)
    # the Monte Carlo propensity (200 draws) tracks the true probability of the served model
    err = [abs(e.propensity - probs[e.model]) for e in out]
    assert np.mean(err) < 0.05 and all(0 < e.propensity <= 1 for e in out)
    assert freq[d.model] > 0.3 * len(out) and freq["tiny"] < 0.05 * len(out)  # good models win most
    # a confident posterior (large pseudo count) hardly explores
    sure = run(ExplorationConfig(kind="thompson", thompson_pseudo_count=1e6), 200)
    assert Counter(e.model for e in sure)[d.model] >= 195


def test_boost_gives_new_models_extra_traffic() -> None:
    plain = ExplorationConfig(kind="epsilon_greedy", epsilon=0.1)
    boosted = ExplorationConfig(kind="epsilon_greedy", epsilon=0.1, boost_models=("small",), boost_epsilon=0.2)
    d = decide()
    p0 = action_probabilities(d, MODELS, Q, C, L, PREFS, plain)
    p1 = action_probabilities(d, MODELS, Q, C, L, PREFS, boosted)
    assert p1["small"] == pytest.approx(p0["small"] + 0.2) and sum(p1.values()) == pytest.approx(1.0)
    assert boosted.name == "epsilon_greedy(0.1)+boost(0.2)"
    ts = ExplorationConfig(kind="thompson", thompson_pseudo_count=1e6, boost_models=("small",), boost_epsilon=0.3)
    out = run(ts, 1000, seed=2)
    share = sum(e.model == "small" for e in out) / len(out)
    assert share == pytest.approx(0.3, abs=0.05)
    assert all(e.propensity == pytest.approx(0.3 + 0.7 / 201, abs=1e-9) for e in out if e.model == "small")


def test_thompson_strength_follows_the_routers_evidence(tmp_path) -> None:
    """With thompson_evidence_half, a model the router has seen few outcomes of gets wide draws and
    more traffic; one it has seen many of is explored about as with the fixed strength."""
    fixed = ExplorationConfig(kind="thompson", thompson_pseudo_count=20.0)
    seen = {"big": 50_000, "mid": 50_000, "small": 0, "tiny": 50_000, "vision": 50_000}
    scaled = ExplorationConfig(kind="thompson", thompson_pseudo_count=20.0, thompson_evidence_half=200.0,
                               evidence=seen)
    assert fixed.strength(MODELS).tolist() == [20.0] * 5
    n = scaled.strength(MODELS)
    assert n[2] == 2.0 and all(19.9 < n[j] < 20.0 for j in (0, 1, 3, 4))
    assert ExplorationConfig(kind="thompson", thompson_evidence_half=200.0,
                             evidence={"small": 200}).strength(["small"]).tolist() == [10.0]
    assert scaled.name == "thompson(20,evidence/200)"
    d = decide()
    rng = np.random.default_rng(0)
    p_fixed = action_probabilities(d, MODELS, Q, C, L, PREFS, fixed, rng, draws=20_000)
    p_scaled = action_probabilities(d, MODELS, Q, C, L, PREFS, scaled, rng, draws=20_000)
    assert p_scaled["small"] > p_fixed["small"] + 0.05, (p_fixed, p_scaled)
    assert sum(p_scaled.values()) == pytest.approx(1.0)
    out = run(scaled, 1000, seed=5)  # the logged propensity is that of the scaled draws
    freq = Counter(e.model for e in out)
    assert freq["small"] / len(out) == pytest.approx(p_scaled["small"], abs=0.04)
    assert np.mean([abs(e.propensity - p_scaled[e.model]) for e in out]) < 0.05
    # the counts come from the router folder; a folder without them is a clear error
    (tmp_path / "training_metrics.json").write_text(
        '{"summary": {"observed_per_model": {"big": 7, "small": 0}}}')
    assert read_evidence(tmp_path) == {"big": 7, "small": 0}
    (tmp_path / "training_metrics.json").write_text('{"summary": {}}')
    with pytest.raises(ValueError, match="observed_per_model.*thompson_evidence_half to null"):
        read_evidence(tmp_path)
    with pytest.raises(ValueError, match="evidence"):
        ExplorationConfig(kind="thompson", thompson_evidence_half=200.0, evidence={"big": -1})


@pytest.mark.parametrize("kwargs", [{"kind": "softmax"}, {"epsilon": 1.5}, {"epsilon": -0.1},
                                    {"thompson_pseudo_count": 0}, {"boost_models": "small"},
                                    {"kind": "epsilon_greedy", "epsilon": 0.9, "boost_models": ("a",),
                                     "boost_epsilon": 0.2}, {"propensity_draws": 0}, {"margin": -0.1},
                                    {"margin": float("nan")}, {"thompson_evidence_half": 0},
                                    {"thompson_evidence_half": float("inf")}])
def test_invalid_configs_are_rejected(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ExplorationConfig(**kwargs)


def test_margin_limits_exploration_to_near_ties() -> None:
    d = decide()
    best = d.utility[d.model]
    near = {m for m, u in d.utility.items() if u >= best - 0.1}
    far = set(d.utility) - near
    assert len(near) >= 2 and far, "the fixture must have near-ties and clear losers"
    cfg = ExplorationConfig(kind="epsilon_greedy", epsilon=0.3, margin=0.1)
    probs = action_probabilities(d, MODELS, Q, C, L, PREFS, cfg)
    assert sum(probs.values()) == pytest.approx(1.0)
    assert all(probs[m] == 0.0 for m in far)
    assert probs[d.model] == pytest.approx(0.7 + 0.3 / len(near))
    out = run(cfg, 2000, seed=3)
    assert {e.model for e in out} == near
    assert all(e.propensity == pytest.approx(probs[e.model]) for e in out)
    assert cfg.name == "epsilon_greedy(0.3)@margin(0.1)"
    # no near-tie at all: no exploration
    solo = run(ExplorationConfig(kind="epsilon_greedy", epsilon=0.3, margin=0.0), 200, seed=4)
    assert {(e.model, e.propensity, e.explored) for e in solo} == {(d.model, 1.0, False)}
