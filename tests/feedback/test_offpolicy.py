"""Off-policy estimators on synthetic bandit data where the target policy's true value is known."""

from __future__ import annotations

import numpy as np
import pytest

from neural_router.feedback import offpolicy as op


def _world(n=1500, k=4, seed=0):
    """Contexts, true success probabilities mu[N, K], a logging and a target policy."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    theta = rng.normal(size=(3, k)) * 1.5
    mu = 1 / (1 + np.exp(-(x @ theta + rng.normal(0, 0.3, k))))
    # logging: epsilon-greedy on a poor estimate; target: greedy on a better one (they disagree often)
    log_probs = op.epsilon_greedy_probs(mu + rng.normal(0, 0.3, mu.shape), 0.3)
    target = op.greedy_probs(mu + rng.normal(0, 0.05, mu.shape))
    return mu, log_probs, target


def _draw(mu, log_probs, rng):
    a, p = op.sample_actions(log_probs, rng)
    r = (rng.random(len(a)) < mu[np.arange(len(a)), a]).astype(float)
    return a, p, r


def test_policies_are_distributions_with_the_right_support():
    u = np.array([[0.1, 0.5, 0.5, -1.0], [2.0, 0.0, 1.0, 1.0]])
    g = op.greedy_probs(u, tie_break=np.array([[1, 3, 2, 0], [0, 0, 0, 0]]))
    assert g.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]]  # tie 0.5/0.5 -> smaller tie_break (index 2)
    e = op.epsilon_greedy_probs(u, 0.2, eligible=np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool))
    assert np.allclose(e.sum(1), 1) and e[0, 3] == 0 and np.isclose(e[1, 1], 0.05)
    assert np.isclose(e[1, 0], 0.8 + 0.05)
    s = op.softmax_probs(u, 0.1, floor=0.1)
    assert np.allclose(s.sum(1), 1) and (s >= 0.1 / 4 - 1e-12).all() and s[1].argmax() == 0
    a, p = op.sample_actions(np.tile([[0.7, 0.2, 0.1]], (20000, 1)), 0)
    assert np.allclose(np.bincount(a, minlength=3) / 20000, [0.7, 0.2, 0.1], atol=0.01)
    assert np.allclose(p, np.array([0.7, 0.2, 0.1])[a])


def test_utilities_match_the_router_policy():
    from neural_router.policy.routing import Preferences, utility

    rng = np.random.default_rng(1)
    q, c, l = rng.random((5, 3)), rng.random((5, 3)) * 0.01, rng.random((5, 3)) * 900
    ours = op.utilities(q, c, l, 1.0, 0.3, 0.2)
    assert np.allclose(ours, utility(q, c, l, Preferences(1.0, 0.3, 0.2)))
    # the observed reward of action j equals the utility of its column with the same maxima
    r = op.observed_reward(q[:, 1], c[:, 1], l[:, 1], c.max(1), l.max(1), 1.0, 0.3, 0.2)
    assert np.allclose(r, ours[:, 1])


def test_utilities_take_per_row_weights_and_refuse_bad_ones():
    from neural_router.policy.routing import Preferences, utility

    rng = np.random.default_rng(2)
    q, c, l = rng.random((4, 3)), rng.random((4, 3)) * 0.01, rng.random((4, 3)) * 900
    cw = np.array([0.0, 0.1, 0.5, 2.0])
    ours = op.utilities(q, c, l, 1.0, cw, 0.0)
    for i, w in enumerate(cw):
        assert np.allclose(ours[i], utility(q[i], c[i], l[i], Preferences(1.0, float(w), 0.0)))
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="cost_weight"):
            op.utilities(q, c, l, 1.0, bad, 0.0)


def test_estimators_are_unbiased_and_dr_has_lower_variance():
    mu, log_probs, target = _world()
    true_value = float((target * mu).sum(1).mean())
    logging_true = float((log_probs * mu).sum(1).mean())
    rng = np.random.default_rng(7)
    good_model = np.clip(mu + rng.normal(0, 0.05, mu.shape), 0, 1)   # a decent reward model
    est = {"ips": [], "snips": [], "dr": [], "logging": []}
    for _ in range(300):
        a, p, r = _draw(mu, log_probs, rng)
        est["ips"].append(op.ips(a, p, r, target, n_boot=0).value)
        est["snips"].append(op.snips(a, p, r, target, n_boot=0).value)
        est["dr"].append(op.doubly_robust(a, p, r, target, good_model, n_boot=0).value)
        est["logging"].append(op.logging_value(r, n_boot=0).value)
    ips_, dr_ = np.array(est["ips"]), np.array(est["dr"])
    assert abs(true_value - logging_true) > 0.05          # the two policies really differ
    se_ips = ips_.std() / np.sqrt(len(ips_))
    assert abs(ips_.mean() - true_value) < 4 * se_ips + 1e-3
    assert abs(dr_.mean() - true_value) < 4 * dr_.std() / np.sqrt(len(dr_)) + 1e-3
    assert abs(np.mean(est["snips"]) - true_value) < 0.01
    assert abs(np.mean(est["logging"]) - logging_true) < 0.01
    assert dr_.std() < 0.6 * ips_.std()                   # DR with a good model: much less variance
    # DR stays unbiased with a useless reward model (it only loses the variance reduction)
    bad_model = np.full_like(mu, 0.9)
    bad = [op.doubly_robust(*_draw(mu, log_probs, rng), target, bad_model, n_boot=0).value
           for _ in range(300)]
    assert abs(np.mean(bad) - true_value) < 4 * np.std(bad) / np.sqrt(300) + 1e-3


def test_bootstrap_intervals_cover_the_true_value():
    mu, log_probs, target = _world(n=800, seed=3)
    true_value = float((target * mu).sum(1).mean())
    rng = np.random.default_rng(11)
    model = np.clip(mu + rng.normal(0, 0.05, mu.shape), 0, 1)
    hits = {"ips": 0, "dr": 0}
    reps = 40
    for i in range(reps):
        a, p, r = _draw(mu, log_probs, rng)
        res = op.evaluate_policy(a, p, r, target, model, n_boot=300, seed=i)
        for m in hits:
            e = res[m]
            assert e.ci_low <= e.value <= e.ci_high and e.n == 800 and e.std_err > 0
            hits[m] += e.ci_low <= true_value <= e.ci_high
        assert 0 < res["match_rate"] < 1 and 0 < res["effective_n"] < 800
    assert hits["ips"] >= 0.8 * reps and hits["dr"] >= 0.8 * reps


def test_paired_comparison_finds_the_better_policy():
    mu, log_probs, _ = _world(n=2000, seed=5)
    rng = np.random.default_rng(2)
    good = op.greedy_probs(mu)                  # the best policy
    worse = op.greedy_probs(-mu)                # the worst one
    a, p, r = _draw(mu, log_probs, rng)
    cmp = op.compare_policies(a, p, r, worse, good, reward_model_b=mu, n_boot=300)
    true_gap = float((good * mu).sum(1).mean() - (worse * mu).sum(1).mean())
    for m in ("ips", "snips", "dr"):
        d = cmp["diff"][m]
        assert d.ci_low > 0, m                  # B is significantly better
        assert abs(d.value - (cmp["b"][m].value - cmp["a"][m].value)) < 1e-9
    assert cmp["diff"]["dr"].ci_low <= true_gap <= cmp["diff"]["dr"].ci_high
    # paired intervals are tighter than the naive sum of the two separate ones
    sep = (cmp["a"]["dr"].ci_high - cmp["a"]["dr"].ci_low) + (cmp["b"]["dr"].ci_high - cmp["b"]["dr"].ci_low)
    assert cmp["diff"]["dr"].ci_high - cmp["diff"]["dr"].ci_low < sep


def test_dr_difference_by_clip_spans_direct_method_to_dr():
    mu, log_probs, _ = _world(n=600, seed=3)
    a, p, r = _draw(mu, log_probs, np.random.default_rng(4))
    good, worse = op.greedy_probs(mu), op.greedy_probs(-mu)
    noisy = np.clip(mu + np.random.default_rng(5).normal(0, 0.2, mu.shape), 0, 1)   # an imperfect model
    by = op.dr_difference_by_clip(a, p, r, worse, good, noisy, clips=(0, 2, 1e9))
    assert set(by) == {"0", "2", "1e+09"}
    dm = float((good * noisy).sum(1).mean() - (worse * noisy).sum(1).mean())
    assert by["0"] == pytest.approx(dm)                        # clip 0: no correction at all
    dr = op.compare_policies(a, p, r, worse, good, reward_model_b=noisy, n_boot=0)["diff"]["dr"].value
    assert by["1e+09"] == pytest.approx(dr) and by["2"] != pytest.approx(dr)   # no clip: plain DR
    assert op.dr_difference_by_clip(a[:0], p[:0], r[:0], worse[:0], good[:0], noisy[:0]) == {}
    with pytest.raises(ValueError, match="clips"):
        op.dr_difference_by_clip(a, p, r, worse, good, noisy, clips=(-1,))


def test_action_shift_is_a_shrunk_per_action_mean_residual():
    chosen = np.array([0, 0, 0, 1, -1, 0])
    observed = np.array([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    predicted = np.array([0.5, 0.5, 0.5, 0.2, 0.9, np.nan])     # row 4: outside the actions; row 5: no prediction
    overall = (0.5 + 0.5 - 0.5 + 0.8) / 4
    s = op.action_shift(chosen, observed, predicted, 3, strength=2.0)
    assert s[0] == pytest.approx((0.5 + 2 * overall) / (3 + 2))
    assert s[1] == pytest.approx((0.8 + 2 * overall) / (1 + 2))
    assert s[2] == pytest.approx(overall)                          # never chosen: the overall mean
    assert op.action_shift(chosen, observed, predicted, 3, strength=0.0)[:2] == pytest.approx([0.5 / 3, 0.8])
    assert op.action_shift(chosen, observed, predicted, 3, strength=0.0)[2] == pytest.approx(overall)
    assert op.action_shift(chosen[:0], observed[:0], predicted[:0], 3).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="same length"):
        op.action_shift(chosen, observed[:2], predicted, 3)
    with pytest.raises(ValueError, match="strength"):
        op.action_shift(chosen, observed, predicted, 3, strength=-1)


def test_greedy_logging_cannot_see_unexplored_actions():
    """With propensity-1 logging, IPS gives an action the logger never took no credit at all."""
    mu = np.tile([[0.2, 0.9]], (500, 1))
    a = np.zeros(500, int)
    r = (np.random.default_rng(0).random(500) < 0.2).astype(float)
    target = op.greedy_probs(mu)                # always action 1, never logged
    assert op.ips(a, np.ones(500), r, target, n_boot=0).value == 0.0
    assert op.doubly_robust(a, np.ones(500), r, target, mu, n_boot=0).value == pytest.approx(0.9)


def test_out_of_space_actions_and_bad_inputs():
    pi = np.array([[1.0, 0.0], [0.0, 1.0]])
    w = op.importance_weights(np.array([-1, 1]), np.array([0.5, 0.25]), pi)
    assert w.tolist() == [0.0, 4.0]
    assert op.importance_weights(np.array([-1, 1]), np.array([0.5, 0.25]), pi, clip=3).tolist() == [0.0, 3.0]
    with pytest.raises(ValueError, match="propensit"):
        op.ips([0, 1], [0.0, 1.0], [1.0, 0.0], pi)
    with pytest.raises(ValueError, match="outside"):
        op.ips([0, 2], [1.0, 1.0], [1.0, 0.0], pi)
    with pytest.raises(ValueError, match="reward_model"):
        op.doubly_robust([0, 1], [1.0, 1.0], [1.0, 0.0], pi, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="target_probs"):
        op.ips([0, 1], [1.0, 1.0], [1.0, 0.0], pi * 2)
    empty = op.ips(np.zeros(0, int), np.zeros(0), np.zeros(0), np.zeros((0, 2)))
    assert empty.n == 0 and np.isnan(empty.value)
