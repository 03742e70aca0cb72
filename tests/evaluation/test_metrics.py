"""Tests for neural_router.metrics on synthetic data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neural_router.evaluation import metrics as m

NAN = np.nan


# ---------------------------------------------------------------------------- operating points


def test_routed_quality_cost_picks_chosen_entries_and_skips_nan() -> None:
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [NAN, 1.0]])
    costs = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, NAN]])
    q, c = m.routed_quality_cost(scores, costs, np.array([0, 1, 0]))
    assert q == pytest.approx(1.0)          # (1 + 1) / 2, third prompt's score is NaN
    assert c == pytest.approx((1 + 20 + 3) / 3)
    q, c = m.routed_quality_cost(scores, costs, np.array([1, 0, 1]))
    assert q == pytest.approx(1 / 3)
    assert c == pytest.approx(6.0)          # (10 + 2) / 2, third cost NaN -> ignored


def test_routed_quality_cost_rejects_bad_choice() -> None:
    with pytest.raises(ValueError):
        m.routed_quality_cost(np.zeros((2, 2)), np.zeros((2, 2)), np.array([0, 2]))


def test_single_model_points_nanmean() -> None:
    scores = np.array([[1.0, 0.0], [NAN, 1.0], [0.0, 1.0]])
    costs = np.array([[1.0, 4.0], [3.0, NAN], [5.0, 2.0]])
    q, c = m.single_model_points(scores, costs)
    np.testing.assert_allclose(q, [0.5, 2 / 3])
    np.testing.assert_allclose(c, [3.0, 3.0])


def test_oracle_takes_cheapest_among_best() -> None:
    scores = np.array([[1.0, 1.0, 0.0],
                       [0.0, 0.0, 0.0],
                       [0.0, 1.0, NAN],
                       [NAN, NAN, NAN]])
    costs = np.array([[5.0, 2.0, 0.1],
                      [3.0, 1.0, 4.0],
                      [0.1, 7.0, 0.01],
                      [1.0, 1.0, 1.0]])
    q, c = m.oracle_point(scores, costs)
    assert q == pytest.approx(2 / 3)            # last prompt has no observation -> skipped
    assert c == pytest.approx((2.0 + 1.0 + 7.0) / 3)


def test_oracle_dominates_every_single_model() -> None:
    rng = np.random.default_rng(0)
    scores = (rng.random((300, 5)) < 0.5).astype(float)
    costs = rng.random((300, 5))
    q_or, _ = m.oracle_point(scores, costs)
    q_single, _ = m.single_model_points(scores, costs)
    assert q_or >= q_single.max()
    assert q_or == pytest.approx(np.mean(scores.max(axis=1)))


def test_random_point_is_mean_over_models() -> None:
    scores = np.array([[1.0, 0.0, NAN], [1.0, 1.0, 0.0]])
    costs = np.array([[1.0, 3.0, 100.0], [2.0, 2.0, 2.0]])
    q, c = m.random_point(scores, costs)
    assert q == pytest.approx((0.5 + 2 / 3) / 2)
    assert c == pytest.approx((104 / 3 + 2) / 2)


# ---------------------------------------------------------------------------- hull and AIQ


def _is_concave_nondecreasing(hc: np.ndarray, hq: np.ndarray) -> bool:
    if hc.size <= 1:
        return True
    slopes = np.diff(hq) / np.diff(hc)
    return bool(np.all(np.diff(hc) > 0) and np.all(slopes > 0) and np.all(np.diff(slopes) <= 1e-12))


def test_hull_is_concave_nondecreasing_and_covers_points() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        c = rng.random(30) * 10
        q = rng.random(30)
        hc, hq = m.convex_hull_nondecreasing(c, q)
        assert _is_concave_nondecreasing(hc, hq)
        # every point lies on or below the (flat-extended) hull wherever the hull is defined
        inside = c >= hc[0]
        assert np.all(q[inside] <= np.interp(c[inside], hc, hq) + 1e-12)
        # the hull starts at the cheapest point and ends at the best quality
        assert hc[0] == pytest.approx(c.min())
        assert hq[-1] == pytest.approx(q.max())


def test_hull_known_example() -> None:
    c = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 2.0, NAN])
    q = np.array([0.2, 0.3, 0.8, 0.9, 0.5, 0.1, 1.0])
    hc, hq = m.convex_hull_nondecreasing(c, q)
    # (2, .3) is below the chord (1,.2)-(3,.8); (5,.5) is dearer and worse than (4,.9); NaN dropped
    np.testing.assert_allclose(hc, [1.0, 3.0, 4.0])
    np.testing.assert_allclose(hq, [0.2, 0.8, 0.9])


def test_hull_of_decreasing_points_is_single_point() -> None:
    hc, hq = m.convex_hull_nondecreasing([1.0, 2.0, 3.0], [0.9, 0.5, 0.1])
    np.testing.assert_allclose(hc, [1.0])
    np.testing.assert_allclose(hq, [0.9])


def test_aiq_flat_curve_equals_its_quality() -> None:
    assert m.aiq([1.0, 2.0, 5.0], [0.7, 0.7, 0.7], 1.0, 5.0) == pytest.approx(0.7)
    # a single point at c_min extends flat to c_max
    assert m.aiq([1.0], [0.4], 1.0, 5.0) == pytest.approx(0.4)


def test_aiq_linear_ramp_and_left_gap_convention() -> None:
    # straight line from (0, 0) to (1, 1): mean height 0.5
    assert m.aiq([0.0, 1.0], [0.0, 1.0], 0.0, 1.0) == pytest.approx(0.5)
    # router starts at cost 0.5 with quality 1: nothing on [0, 0.5) -> 0.5
    assert m.aiq([0.5], [1.0], 0.0, 1.0) == pytest.approx(0.5)
    # points beyond the range are clipped by interpolation: line q = c on [0, 2], range [0, 1]
    assert m.aiq([0.0, 2.0], [0.0, 2.0], 0.0, 1.0) == pytest.approx(0.5)
    # ... and cheaper-than-c_min points start the integral at c_min
    assert m.aiq([-1.0, 1.0], [0.0, 1.0], 0.0, 1.0) == pytest.approx(0.75)


def test_aiq_dominating_router_beats_single_models() -> None:
    c_single = np.array([1.0, 3.0, 10.0])
    q_single = np.array([0.5, 0.6, 0.8])
    base = m.aiq(c_single, q_single, 1.0, 10.0)
    better = m.aiq(c_single, q_single + 0.05, 1.0, 10.0)
    assert better == pytest.approx(base + 0.05)
    # (3, .6) lies above the chord (1,.5)-(10,.8), so it is a hull vertex:
    # area = 2 * .55 + 7 * .7 = 6.0 over a width of 9
    assert base == pytest.approx(6.0 / 9)
    # without it the hull is the chord: mean height .65
    assert m.aiq([1.0, 3.0, 10.0], [0.5, 0.55, 0.8], 1.0, 10.0) == pytest.approx(0.65)
    assert 0.5 <= base <= 0.8


def test_single_models_aiq_matches_aiq() -> None:
    scores = np.array([[1.0, 1.0], [0.0, 1.0]])
    costs = np.array([[1.0, 3.0], [1.0, 3.0]])
    # points (1, .5), (3, 1): mean height of the ramp = .75
    assert m.single_models_aiq(scores, costs) == pytest.approx(0.75)


def test_quality_at_cost_and_cost_to_reach() -> None:
    c = [1.0, 3.0, 4.0]
    q = [0.2, 0.8, 0.9]
    assert math.isnan(m.quality_at_cost(c, q, 0.5))
    assert m.quality_at_cost(c, q, 2.0) == pytest.approx(0.5)
    assert m.quality_at_cost(c, q, 100.0) == pytest.approx(0.9)   # flat extension
    assert m.cost_to_reach(c, q, 0.5) == pytest.approx(2.0)
    assert m.cost_to_reach(c, q, 0.1) == pytest.approx(1.0)
    assert m.cost_to_reach(c, q, 0.9) == pytest.approx(4.0)
    assert math.isnan(m.cost_to_reach(c, q, 0.95))
    # round trip on a random curve
    rng = np.random.default_rng(2)
    rc, rq = rng.random(15), rng.random(15)
    hc, hq = m.convex_hull_nondecreasing(rc, rq)
    target = (hq[0] + hq[-1]) / 2
    assert m.quality_at_cost(rc, rq, m.cost_to_reach(rc, rq, target)) == pytest.approx(target)


# ---------------------------------------------------------------------------- RouteLLM


def test_pgr_basic() -> None:
    assert m.pgr(0.6, 0.4, 0.8) == pytest.approx(0.5)
    np.testing.assert_allclose(m.pgr(np.array([0.4, 0.8]), 0.4, 0.8), [0.0, 1.0])
    assert math.isnan(m.pgr(0.5, 0.5, 0.5))


def test_strong_call_curve_endpoints_and_ties() -> None:
    strong = np.array([1.0, 1.0, 0.0, 1.0])
    weak = np.array([0.0, 1.0, 0.0, 0.0])
    frac, q = m.strong_call_curve(strong, weak, np.ones(4))  # all tied: only the two endpoints
    np.testing.assert_allclose(frac, [0.0, 1.0])
    np.testing.assert_allclose(q, [weak.mean(), strong.mean()])
    frac, q = m.strong_call_curve(strong, weak, np.array([4.0, 3.0, 2.0, 1.0]))
    np.testing.assert_allclose(frac, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(q, [0.25, 0.5, 0.5, 0.5, 0.75])


def test_apgr_random_router_about_half_and_perfect_router_better() -> None:
    rng = np.random.default_rng(3)
    n = 4000
    strong = (rng.random(n) < 0.8).astype(float)
    weak = (rng.random(n) < 0.5).astype(float)
    rand = m.apgr(strong, weak, rng.random(n))
    perfect = m.apgr(strong, weak, strong - weak)
    worst = m.apgr(strong, weak, weak - strong)
    assert rand == pytest.approx(0.5, abs=0.05)
    assert perfect > 0.8
    assert worst < 0.2
    assert m.apgr(strong, weak, np.zeros(n)) == pytest.approx(0.5)  # constant router = diagonal


def test_cpt_perfect_router_small_random_router_proportional() -> None:
    rng = np.random.default_rng(4)
    n = 4000
    strong = (rng.random(n) < 0.8).astype(float)
    weak = (rng.random(n) < 0.5).astype(float)
    win_perfect = strong - weak
    gain_frac = np.mean(strong > weak)
    # perfect router reaches PGR 1 once every prompt where strong wins is sent there (or sooner)
    assert m.cpt(strong, weak, win_perfect, 1.0) <= gain_frac + 1e-9
    assert m.cpt(strong, weak, win_perfect, 0.5) < 0.3
    assert m.cpt(strong, weak, np.zeros(n), 0.5) == pytest.approx(0.5)  # diagonal
    assert m.cpt(strong, weak, rng.random(n), 0.8) == pytest.approx(0.8, abs=0.1)
    assert math.isnan(m.cpt(strong, weak, win_perfect, 5.0))


def test_two_model_metrics_mask_nan() -> None:
    strong = np.array([1.0, 1.0, NAN, 0.0])
    weak = np.array([0.0, 0.0, 1.0, 0.0])
    win = np.array([2.0, 1.0, 5.0, 0.0])
    frac, q = m.strong_call_curve(strong, weak, win)
    assert frac[-1] == 1.0 and q[-1] == pytest.approx(2 / 3)   # NaN prompt dropped
    assert m.apgr(strong, weak, win) > 0.5


# ---------------------------------------------------------------------------- prediction metrics


def test_auroc_brier_mae() -> None:
    y = np.array([0, 0, 1, 1, NAN])
    assert m.auroc(y, np.array([0.1, 0.2, 0.8, 0.9, 0.5])) == pytest.approx(1.0)
    assert m.auroc(y, np.array([0.9, 0.8, 0.2, 0.1, 0.5])) == pytest.approx(0.0)
    assert math.isnan(m.auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert m.brier([0, 1], [0.0, 0.5]) == pytest.approx(0.125)
    assert m.mae([0.0, 1.0, NAN], [0.5, 0.5, 3.0]) == pytest.approx(0.5)


def test_per_model_prediction_metrics_binary_vs_continuous() -> None:
    scores = np.array([[0.0, 0.3], [1.0, 0.9], [NAN, 0.5], [1.0, NAN]])
    pred = np.array([[0.1, 0.2], [0.9, 0.8], [0.5, 0.5], [0.7, 0.5]])
    out = m.per_model_prediction_metrics(scores, pred, ["bin", "cont"])
    assert out["bin"]["n"] == 3 and out["bin"]["binary"] is True
    assert out["bin"]["auroc"] == pytest.approx(1.0)
    assert out["bin"]["brier"] == pytest.approx((0.01 + 0.01 + 0.09) / 3)
    assert "mae" not in out["bin"]
    assert out["cont"]["n"] == 3 and out["cont"]["binary"] is False
    assert out["cont"]["mae"] == pytest.approx(0.2 / 3)
    assert "auroc" not in out["cont"]


# ---------------------------------------------------------------------------- routing on predictions


def test_route_argmax_with_cost_tiebreak() -> None:
    pq = np.array([[0.5, 0.5, 0.1], [0.2, 0.9, 0.9]])
    pc = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    np.testing.assert_array_equal(m.route(pq, pc, 0.0), [1, 2])  # ties -> cheaper
    np.testing.assert_array_equal(m.route(pq, pc, 10.0), [2, 0])  # cost dominates
    np.testing.assert_array_equal(m.route(pq, np.array([1.0, 2.0, 3.0]), 0.0), [0, 1])  # [M] broadcast


def _random_predictions(n: int = 500, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.uniform(0, 1, (n, k))
    price = np.geomspace(0.1, 30, k) / 1e6
    c = rng.integers(50, 2000, (n, 1)) * price * rng.uniform(0.5, 2, (n, k))
    return q, c


def test_route_extremes_are_best_quality_and_cheapest() -> None:
    q, c = _random_predictions()
    np.testing.assert_array_equal(m.route(q, c, 0.0), q.argmax(1))
    np.testing.assert_array_equal(m.route(q, c, 1e12), c.argmin(1))


def test_route_ties_go_to_cheaper_and_bad_lambda_is_refused() -> None:
    q = np.array([[0.8, 0.8, 0.5]])
    c = np.array([[0.02, 0.01, 0.0]])
    assert m.route(q, c, 0.0)[0] == 1
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lam"):
            m.route(q, c, bad)


def test_lambda_grid_sweep_is_monotone_and_traces_a_curve() -> None:
    q, c = _random_predictions()
    lams = m.lambda_grid(c, n=40)
    assert len(lams) == 41 and lams[0] == 0 and np.all(np.diff(lams) > 0)
    idx = [m.route(q, c, lam) for lam in lams]
    np.testing.assert_array_equal(idx[0], q.argmax(1))
    rows = np.arange(len(q))
    mean_cost = np.array([c[rows, i].mean() for i in idx])
    mean_q = np.array([q[rows, i].mean() for i in idx])
    assert np.all(np.diff(mean_cost) <= 1e-15) and np.all(np.diff(mean_q) <= 1e-12)
    # the grid traces a curve rather than jumping straight from one end to the other
    assert len(np.unique(np.round(mean_cost, 12))) > 10


def test_cost_quality_curve_perfect_predictions_reach_oracle_and_cheapest() -> None:
    rng = np.random.default_rng(5)
    n, k = 500, 4
    scores = (rng.random((n, k)) < np.array([0.3, 0.5, 0.7, 0.9])).astype(float)
    costs = np.tile(np.array([0.001, 0.01, 0.1, 1.0]), (n, 1)) * rng.uniform(0.5, 1.5, (n, k))
    lambdas = m.lambda_grid(costs, n=80)
    cc, qq = m.cost_quality_curve(scores, costs, scores, costs, lambdas)
    assert cc.shape == qq.shape == lambdas.shape
    q_or, c_or = m.oracle_point(scores, costs)
    assert qq[0] == pytest.approx(q_or)       # λ = 0 with perfect predictions = oracle
    assert cc[0] == pytest.approx(c_or)
    assert cc[-1] == pytest.approx(costs.min(axis=1).mean())  # huge λ: always the cheapest call
    q_single, _ = m.single_model_points(scores, costs)
    rep = m.router_report("perfect", scores, costs, scores, costs, lambdas)
    assert rep["aiq"] > m.single_models_aiq(scores, costs)
    assert rep["max_quality"] == pytest.approx(q_or)
    assert rep["best_single"]["index"] == int(np.argmax(q_single))
    assert rep["quality_at_best_single_cost"] > q_single.max()
    assert rep["cost_to_match_best_single"] < rep["best_single"]["cost"]
    assert set(rep) >= {"aiq", "quality_at_best_single_cost", "cost_to_match_best_single",
                        "max_quality", "curve"}
    assert len(rep["curve"]["costs"]) == len(lambdas)


def test_router_report_constant_router_equals_single_model() -> None:
    rng = np.random.default_rng(6)
    scores = rng.random((200, 3))
    costs = np.tile([1.0, 2.0, 3.0], (200, 1))
    pq = np.tile([0.0, 1.0, 0.0], (200, 1))  # always model 1, whatever λ (small enough)
    rep = m.router_report("const", scores, costs, pq, costs, [0.0, 0.1], best_single_index=1)
    assert rep["max_quality"] == pytest.approx(scores[:, 1].mean())
    assert rep["curve"]["costs"] == pytest.approx([2.0, 2.0])
    assert rep["quality_at_best_single_cost"] == pytest.approx(scores[:, 1].mean())
    # nothing below cost 2 and flat after: AIQ = q * (3 - 2) / (3 - 1)
    assert rep["aiq"] == pytest.approx(scores[:, 1].mean() / 2)


def test_plot_cost_quality_writes_png(tmp_path) -> None:
    path = tmp_path / "sub" / "curve.png"
    out = m.plot_cost_quality({"r": ([0.001, 0.01, 0.1], [0.3, 0.6, 0.7]), "z": ([0.0, 1.0], [0.1, 0.2])},
                              {"a": (0.001, 0.3), "b": (0.1, 0.65)}, path, "test")
    assert out == path and path.exists()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_only_per_benchmark_and_mean_over_benchmarks():
    from neural_router.evaluation.report import quality_only

    nan = np.nan
    # models A, B, C, D; benchmarks x (rows 0-1) and y (rows 2-3); D is only observed on x
    scores = np.array([[1, 0, 1, 1], [1, 0, 0, 1], [0, 1, 1, nan], [0, 1, 1, nan]], dtype=float)
    pred = np.array([[0.9, 0.1, 0.5, 0.2], [0.9, 0.1, 0.2, 0.3], [0.1, 0.2, 0.9, 0.9], [0.2, 0.9, 0.1, 0.9]])
    q = quality_only(scores, pred, ["x", "x", "y", "y"], ["A", "B", "C", "D"])
    assert q["x"]["router"] == 1.0 and q["x"]["best_single"] == 1.0 and q["x"]["gain"] == 0.0
    assert q["y"]["router"] == 1.0               # D's 0.9 on y is never chosen: it was not observed there
    m = q["mean_over_benchmarks"]                # A 0.5, B 0.5, C 0.75 on average; D not seen on y
    assert m["best_single_model"] == "C" and m["best_single"] == 0.75
    assert m["router"] == 1.0 and m["gain"] == 0.25 and m["n"] == 4
    assert "mean_over_benchmarks" not in quality_only(scores[:2], pred[:2], ["x", "x"], ["A", "B", "C", "D"])
