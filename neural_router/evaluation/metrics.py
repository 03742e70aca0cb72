"""Evaluation metrics for routers: cost-quality curves, AIQ, RouteLLM's PGR/APGR/CPT, prediction quality.

Pure functions over numpy arrays; nothing here holds state or changes global settings.

Conventions (N prompts, M models):

* ``scores[N, M]`` -- the true outcome of each model on each prompt (NaN = not observed);
* ``costs[N, M]`` -- the true USD cost of each call (NaN allowed);
* ``choice[N]`` -- integer index of the model a router picked for each prompt;
* a *curve* is a pair of 1-D arrays ``(costs[K], qualities[K])``: the average cost and the average
  quality of K router configurations (for example a sweep over the cost weight lambda).

AIQ convention (RouterBench, Hu et al. 2024, "Average Improvement in Quality")
-----------------------------------------------------------------------------
``aiq(costs, qualities, c_min, c_max)``:

1. Take the router's (cost, quality) points and build their upper convex hull, then make it
   non-decreasing (see :func:`convex_hull_nondecreasing`): a router can reach any point on a segment
   between two of its configurations by randomising between them, and it never needs to pay more for
   less quality, so everything after the hull's best-quality point is replaced by a flat line.
2. Extend the hull horizontally to ``c_max`` (the router can keep its best quality at more cost).
3. Integrate the piecewise-linear hull with the trapezoid rule over ``[c_min, c_max]`` (the hull is
   interpolated at the edges, so points outside the range are clipped, not dropped), and divide by
   ``c_max - c_min``. Costs are on a *linear* axis.
4. Below the router's cheapest point the curve is undefined and contributes **0** to the area (the
   router cannot operate there), which penalises a router whose cheapest setting is dearer than
   ``c_min``.

``c_min``/``c_max`` are the smallest and largest *average* cost of the single models
(:func:`single_model_points`). Degenerate range (``c_max == c_min``): the hull's quality at that cost.
Applying the same function to the single models' points gives the "best single models" baseline
(:func:`single_models_aiq`); a flat curve at quality q spanning the range gives exactly q.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

__all__ = [
    "routed_quality_cost",
    "single_model_points",
    "oracle_point",
    "random_point",
    "convex_hull_nondecreasing",
    "aiq",
    "single_models_aiq",
    "quality_at_cost",
    "cost_to_reach",
    "pgr",
    "strong_call_curve",
    "pgr_curve",
    "apgr",
    "cpt",
    "auroc",
    "brier",
    "mae",
    "per_model_prediction_metrics",
    "route",
    "lambda_grid",
    "cost_quality_curve",
    "router_report",
    "plot_cost_quality",
]

_TIE_EPS = 1e-12


# --------------------------------------------------------------------------------------------------
# helpers


def _as2d(x: ArrayLike, name: str) -> FloatArray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, M], got shape {a.shape}")
    return a


def _as1d(x: ArrayLike, name: str) -> FloatArray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def nanmean(a: ArrayLike, axis: int | None = None) -> Any:
    """``np.nanmean`` as float64 without the 'mean of empty slice' warning (all-NaN slices give NaN).

    The one NaN-aware mean of the evaluation code (metrics and baselines)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(np.asarray(a, dtype=np.float64), axis=axis)


def _trapezoid(y: FloatArray, x: FloatArray) -> float:
    # np.trapz is gone in numpy >= 2.4 and np.trapezoid is missing before 2.0: do it by hand.
    if len(x) < 2:
        return 0.0
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) * 0.5))


# --------------------------------------------------------------------------------------------------
# operating points


def routed_quality_cost(scores: ArrayLike, costs: ArrayLike, choice: ArrayLike) -> tuple[float, float]:
    """Mean true quality and mean true cost of routing each prompt to ``choice[i]``.

    Prompts whose chosen entry is NaN are ignored (separately for quality and cost, i.e. nanmean).
    """
    s = _as2d(scores, "scores")
    c = _as2d(costs, "costs")
    if s.shape != c.shape:
        raise ValueError(f"scores {s.shape} and costs {c.shape} differ in shape")
    ch = np.asarray(choice).astype(np.int64)
    if ch.shape != (s.shape[0],):
        raise ValueError(f"choice must have shape ({s.shape[0]},), got {ch.shape}")
    if ch.size and (ch.min() < 0 or ch.max() >= s.shape[1]):
        raise ValueError("choice holds an index outside [0, M)")
    rows = np.arange(s.shape[0])
    return float(nanmean(s[rows, ch])), float(nanmean(c[rows, ch]))


def single_model_points(scores: ArrayLike, costs: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Per-model mean observed quality ``q[M]`` and mean observed cost ``c[M]``."""
    s = _as2d(scores, "scores")
    c = _as2d(costs, "costs")
    return nanmean(s, axis=0), nanmean(c, axis=0)


def oracle_point(scores: ArrayLike, costs: ArrayLike) -> tuple[float, float]:
    """RouterBench oracle: per prompt, the cheapest model among those with the best observed score.

    Prompts with no observed score are skipped. A model with a NaN cost only wins a tie if every
    tied model's cost is NaN (then that prompt's cost is NaN and is left out of the cost mean).
    """
    s = _as2d(scores, "scores")
    c = _as2d(costs, "costs")
    if s.shape != c.shape:
        raise ValueError(f"scores {s.shape} and costs {c.shape} differ in shape")
    keep = np.isfinite(s).any(axis=1)
    s, c = s[keep], c[keep]
    if s.shape[0] == 0:
        return float("nan"), float("nan")
    s_filled = np.where(np.isfinite(s), s, -np.inf)
    best = s_filled.max(axis=1, keepdims=True)
    tied = s_filled >= best - _TIE_EPS
    c_tie = np.where(tied & np.isfinite(c), c, np.inf)
    pick = np.argmin(c_tie, axis=1)
    # all tied costs NaN: argmin over inf returns the first column, which may not be tied -> first tied
    no_cost = ~np.isfinite(c_tie.min(axis=1))
    pick[no_cost] = np.argmax(tied[no_cost], axis=1)
    rows = np.arange(s.shape[0])
    return float(nanmean(s[rows, pick])), float(nanmean(c[rows, pick]))


def random_point(scores: ArrayLike, costs: ArrayLike) -> tuple[float, float]:
    """Expected quality and cost of routing every prompt to a uniformly random model.

    Per prompt the expectation is the mean over the models observed on it; then the mean over prompts.
    """
    s = _as2d(scores, "scores")
    c = _as2d(costs, "costs")
    return float(nanmean(nanmean(s, axis=1))), float(nanmean(nanmean(c, axis=1)))


# --------------------------------------------------------------------------------------------------
# cost-quality curves


def convex_hull_nondecreasing(costs: ArrayLike, qualities: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Upper convex hull of the points ``(costs[k], qualities[k])``, made non-decreasing.

    Returns the hull's vertices ``(hc, hq)`` sorted by cost: ``hc`` strictly increasing, ``hq``
    strictly increasing and concave (piecewise-linear). Non-finite points are dropped; of points with
    equal cost only the best counts. The hull stops at its (cheapest) best-quality point: beyond it a
    router would pay more for less, so the curve continues flat (done by :func:`quality_at_cost` and
    :func:`aiq`). Empty arrays when no point is finite.
    """
    x = _as1d(costs, "costs")
    y = _as1d(qualities, "qualities")
    if x.shape != y.shape:
        raise ValueError(f"costs {x.shape} and qualities {y.shape} differ in shape")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size == 0:
        return np.zeros(0), np.zeros(0)
    order = np.lexsort((-y, x))  # by cost, then best quality first
    x, y = x[order], y[order]
    first = np.ones(x.size, dtype=bool)
    first[1:] = x[1:] != x[:-1]
    x, y = x[first], y[first]

    hx: list[float] = []
    hy: list[float] = []
    for px, py in zip(x.tolist(), y.tolist()):
        while len(hx) >= 2:
            ox, oy, ax, ay = hx[-2], hy[-2], hx[-1], hy[-1]
            cross = (ax - ox) * (py - oy) - (ay - oy) * (px - ox)
            if cross >= 0:  # not a strict right turn: the middle point lies on/below the chord
                hx.pop()
                hy.pop()
            else:
                break
        hx.append(px)
        hy.append(py)
    hcost = np.asarray(hx)
    hqual = np.asarray(hy)
    top = int(np.argmax(hqual))  # first (cheapest) best point; the concave hull rises up to it
    return hcost[: top + 1], hqual[: top + 1]


def quality_at_cost(costs: ArrayLike, qualities: ArrayLike, budget: float) -> float:
    """Quality of the non-decreasing hull at cost ``budget`` (linear interpolation, flat to the right).

    NaN when ``budget`` is below the hull's cheapest point or there is no finite point.
    """
    hc, hq = convex_hull_nondecreasing(costs, qualities)
    if hc.size == 0 or not np.isfinite(budget) or budget < hc[0]:
        return float("nan")
    return float(np.interp(budget, hc, hq))


def cost_to_reach(costs: ArrayLike, qualities: ArrayLike, target_quality: float) -> float:
    """Minimum cost on the non-decreasing hull at which quality reaches ``target_quality``.

    NaN when the hull never reaches it; the hull's cheapest cost when even that point reaches it.
    """
    hc, hq = convex_hull_nondecreasing(costs, qualities)
    if hc.size == 0 or not np.isfinite(target_quality) or target_quality > hq[-1] + _TIE_EPS:
        return float("nan")
    if target_quality <= hq[0]:
        return float(hc[0])
    return float(np.interp(target_quality, hq, hc))  # hq is strictly increasing


def aiq(costs: ArrayLike, qualities: ArrayLike, c_min: float, c_max: float) -> float:
    """RouterBench AIQ: mean height of the router's non-decreasing convex hull over ``[c_min, c_max]``.

    Area under the hull (extended flat to ``c_max``; zero below the router's cheapest point; points
    outside the range clipped by interpolation) divided by ``c_max - c_min``. See the module docstring.
    NaN when no point is finite; when ``c_max == c_min``, the hull's quality at that cost.
    """
    if not (np.isfinite(c_min) and np.isfinite(c_max)) or c_max < c_min:
        raise ValueError(f"need finite c_min <= c_max, got {c_min}, {c_max}")
    hc, hq = convex_hull_nondecreasing(costs, qualities)
    if hc.size == 0:
        return float("nan")
    if c_max == c_min:
        return quality_at_cost(hc, hq, c_min)
    lo = max(float(c_min), float(hc[0]))
    hi = float(c_max)
    if lo >= hi:
        return 0.0
    inner = hc[(hc > lo) & (hc < hi)]
    xs = np.concatenate([[lo], inner, [hi]])
    ys = np.interp(xs, hc, hq)  # np.interp holds the last value: the flat extension to c_max
    return _trapezoid(ys, xs) / (hi - float(c_min))


def single_models_aiq(scores: ArrayLike, costs: ArrayLike) -> float:
    """AIQ of the single models' hull (the "best single models" baseline) over their own cost range."""
    q, c = single_model_points(scores, costs)
    ok = np.isfinite(q) & np.isfinite(c)
    if not ok.any():
        return float("nan")
    return aiq(c[ok], q[ok], float(c[ok].min()), float(c[ok].max()))


# --------------------------------------------------------------------------------------------------
# RouteLLM two-model metrics


def pgr(q: ArrayLike, q_weak: float, q_strong: float) -> Any:
    """Performance Gap Recovered: ``(q - q_weak) / (q_strong - q_weak)`` (NaN when the gap is 0)."""
    qa = np.asarray(q, dtype=np.float64)
    gap = float(q_strong) - float(q_weak)
    if gap == 0 or not np.isfinite(gap):
        out = np.full_like(qa, np.nan)
    else:
        out = (qa - float(q_weak)) / gap
    return float(out) if out.ndim == 0 else out


def _two_model_arrays(strong_score: ArrayLike, weak_score: ArrayLike,
                      win: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    s = _as1d(strong_score, "strong_score")
    w = _as1d(weak_score, "weak_score")
    r = _as1d(win, "win")
    if not (s.shape == w.shape == r.shape):
        raise ValueError(f"shapes differ: strong {s.shape}, weak {w.shape}, win {r.shape}")
    ok = np.isfinite(s) & np.isfinite(w) & np.isfinite(r)
    return s[ok], w[ok], r[ok]


def strong_call_curve(strong_score: ArrayLike, weak_score: ArrayLike,
                      win: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Sweep the threshold over every quantile of ``win`` (send to strong when ``win >= t``).

    Returns ``(frac_strong[K], quality[K])`` from ``(0, mean weak)`` to ``(1, mean strong)``, one point
    per distinct value of ``win``. Prompts with a NaN in any input are dropped. Tied ``win`` values
    move together, so linear interpolation between points equals random tie-breaking.
    """
    s, w, r = _two_model_arrays(strong_score, weak_score, win)
    n = s.size
    if n == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-r, kind="stable")
    r_sorted = r[order]
    cum_gain = np.concatenate([[0.0], np.cumsum((s - w)[order])])
    inner = np.nonzero(r_sorted[1:] != r_sorted[:-1])[0] + 1
    k = np.concatenate([[0], inner, [n]])
    frac = k / n
    quality = (w.sum() + cum_gain[k]) / n
    return frac.astype(np.float64), quality


def pgr_curve(strong_score: ArrayLike, weak_score: ArrayLike,
              win: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """``(frac_strong[K], PGR[K])`` of the threshold sweep (see :func:`strong_call_curve`)."""
    s, w, r = _two_model_arrays(strong_score, weak_score, win)
    frac, quality = strong_call_curve(s, w, r)
    if frac.size == 0:
        return frac, quality
    return frac, np.asarray(pgr(quality, float(w.mean()), float(s.mean())), dtype=np.float64)


def apgr(strong_score: ArrayLike, weak_score: ArrayLike, win: ArrayLike) -> float:
    """Average PGR: area under PGR vs the fraction of strong calls on [0, 1] (RouteLLM).

    A random router scores about 0.5, a perfect one more (it can exceed 1 when the weak model beats
    the strong one on some prompts). NaN when both models have the same mean quality.
    """
    frac, p = pgr_curve(strong_score, weak_score, win)
    if frac.size == 0 or not np.all(np.isfinite(p)):
        return float("nan")
    return _trapezoid(p, frac)


def cpt(strong_score: ArrayLike, weak_score: ArrayLike, win: ArrayLike, target_pgr: float) -> float:
    """Call-Performance Threshold: the smallest fraction of strong calls reaching ``target_pgr``.

    ``target_pgr`` is a fraction (0.5 for CPT(50%)). Found on the piecewise-linear PGR curve (a router
    can randomise between two adjacent thresholds), at the first crossing. NaN if never reached.
    """
    frac, p = pgr_curve(strong_score, weak_score, win)
    if frac.size == 0 or not np.all(np.isfinite(p)):
        return float("nan")
    hit = np.nonzero(p >= target_pgr - _TIE_EPS)[0]
    if hit.size == 0:
        return float("nan")
    i = int(hit[0])
    if i == 0:
        return float(frac[0])
    f0, f1, p0, p1 = frac[i - 1], frac[i], p[i - 1], p[i]
    return float(f0 + (target_pgr - p0) / (p1 - p0) * (f1 - f0))


# --------------------------------------------------------------------------------------------------
# prediction quality


def _paired(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[FloatArray, FloatArray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and prediction {p.shape} differ in shape")
    ok = np.isfinite(t) & np.isfinite(p)
    return t[ok], p[ok]


def auroc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """ROC AUC of binary labels (NaN pairs masked); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    t, p = _paired(y_true, y_score)
    if t.size == 0 or np.unique(t).size < 2:
        return float("nan")
    if not np.all((t == 0) | (t == 1)):
        raise ValueError("auroc needs labels in {0, 1}")
    return float(roc_auc_score(t.astype(np.int64), p))


def brier(y_true: ArrayLike, p: ArrayLike) -> float:
    """Mean squared error of a probability against the outcome (NaN pairs masked)."""
    t, q = _paired(y_true, p)
    return float(np.mean((q - t) ** 2)) if t.size else float("nan")


def mae(y_true: ArrayLike, pred: ArrayLike) -> float:
    """Mean absolute error (NaN pairs masked)."""
    t, q = _paired(y_true, pred)
    return float(np.mean(np.abs(q - t))) if t.size else float("nan")


def per_model_prediction_metrics(scores: ArrayLike, pred_quality: ArrayLike,
                                 models: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per model: ``n`` (pairs where both are finite), ``binary`` and, for 0/1 outcomes, ``auroc`` and
    ``brier``; otherwise ``mae`` and ``brier`` (the squared error)."""
    s = _as2d(scores, "scores")
    p = _as2d(pred_quality, "pred_quality")
    if s.shape != p.shape:
        raise ValueError(f"scores {s.shape} and pred_quality {p.shape} differ in shape")
    if len(models) != s.shape[1]:
        raise ValueError(f"{len(models)} model names for {s.shape[1]} columns")
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(models):
        t, q = _paired(s[:, j], p[:, j])
        binary = bool(t.size) and bool(np.all((t == 0) | (t == 1)))
        row: dict[str, Any] = {"n": int(t.size), "binary": binary}
        if binary:
            row["auroc"] = auroc(t, q)
        else:
            row["mae"] = mae(t, q)
        row["brier"] = brier(t, q)
        out[name] = row
    return out


# --------------------------------------------------------------------------------------------------
# routing on predictions and reports


def route(pred_quality: ArrayLike, pred_cost: ArrayLike, lam: float) -> NDArray[np.int64]:
    """``choice[N] = argmax_j(pred_quality - lam * pred_cost)``, ties to the lower predicted cost.

    ``pred_cost`` may be ``[N, M]`` or ``[M]`` (broadcast). A NaN utility never wins unless the whole
    row is NaN (then the model with the lowest predicted cost, or column 0). ``lam`` (quality per USD)
    must be finite and >= 0, else ValueError.
    """
    if not (np.isfinite(lam) and lam >= 0):
        raise ValueError(f"route: lam must be a finite number >= 0, got {lam!r}")
    q = _as2d(pred_quality, "pred_quality")
    c = np.broadcast_to(np.asarray(pred_cost, dtype=np.float64), q.shape)
    u = q - float(lam) * c
    u = np.where(np.isfinite(u), u, -np.inf)
    best = u.max(axis=1, keepdims=True)
    tied = u >= best - _TIE_EPS * np.maximum(1.0, np.abs(np.where(np.isfinite(best), best, 0.0)))
    c_tie = np.where(tied & np.isfinite(c), c, np.inf)
    choice = np.argmin(c_tie, axis=1)
    no_cost = ~np.isfinite(c_tie.min(axis=1))
    choice[no_cost] = np.argmax(tied[no_cost], axis=1)
    return choice.astype(np.int64)


def lambda_grid(pred_cost: ArrayLike, n: int = 60, span: float = 1e4) -> FloatArray:
    """A λ sweep for :func:`cost_quality_curve`: 0 then ``n`` log-spaced values around 1/cost scale.

    The scale ``s`` is the mean over rows of (max - min) predicted cost across models; λ runs from
    ``1/(span*s)`` to ``span/s``, i.e. from "quality only" to "cost dominates".
    """
    c = np.asarray(pred_cost, dtype=np.float64)
    if c.ndim == 1:
        c = c[None, :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        spread = np.nanmax(c, axis=1) - np.nanmin(c, axis=1)
    spread = spread[np.isfinite(spread) & (spread > 0)]
    s = float(spread.mean()) if spread.size else 1.0
    return np.concatenate([[0.0], np.logspace(np.log10(1.0 / (span * s)), np.log10(span / s), n)])


def cost_quality_curve(scores: ArrayLike, costs: ArrayLike, pred_quality: ArrayLike,
                       pred_cost: ArrayLike, lambdas: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """For each λ: route on the predictions (:func:`route`), then score on the TRUE scores/costs.

    Returns ``(curve_costs[K], curve_quality[K])`` in the order of ``lambdas``.
    """
    lam = _as1d(np.atleast_1d(np.asarray(lambdas, dtype=np.float64)), "lambdas")
    cc = np.empty(lam.size)
    qq = np.empty(lam.size)
    for k, l in enumerate(lam):
        qq[k], cc[k] = routed_quality_cost(scores, costs, route(pred_quality, pred_cost, float(l)))
    return cc, qq


def router_report(name: str, scores: ArrayLike, costs: ArrayLike, pred_quality: ArrayLike,
                  pred_cost: ArrayLike, lambdas: ArrayLike,
                  best_single_index: int | None = None) -> dict[str, Any]:
    """Summary of one router on test data (JSON-serialisable).

    Keys: ``name``, ``aiq`` (over the single models' cost range), ``quality_at_best_single_cost``,
    ``cost_to_match_best_single``, ``max_quality``, ``curve`` {costs, quality} (raw λ sweep), ``hull``
    {costs, quality}, ``best_single`` {index, quality, cost}, ``c_min``, ``c_max``. "Best single" is
    the model with the highest mean quality unless ``best_single_index`` is given.
    """
    q_single, c_single = single_model_points(scores, costs)
    ok = np.isfinite(q_single) & np.isfinite(c_single)
    if not ok.any():
        raise ValueError("no model has both an observed mean quality and cost")
    c_min, c_max = float(c_single[ok].min()), float(c_single[ok].max())
    if best_single_index is None:
        best = int(np.argmax(np.where(ok, q_single, -np.inf)))
    else:
        best = int(best_single_index)
    bq, bc = float(q_single[best]), float(c_single[best])
    cc, qq = cost_quality_curve(scores, costs, pred_quality, pred_cost, lambdas)
    hc, hq = convex_hull_nondecreasing(cc, qq)
    finite_q = qq[np.isfinite(qq)]
    return {
        "name": name,
        "aiq": aiq(cc, qq, c_min, c_max),
        "quality_at_best_single_cost": quality_at_cost(cc, qq, bc),
        "cost_to_match_best_single": cost_to_reach(cc, qq, bq),
        "max_quality": float(finite_q.max()) if finite_q.size else float("nan"),
        "curve": {"costs": cc.tolist(), "quality": qq.tolist()},
        "hull": {"costs": hc.tolist(), "quality": hq.tolist()},
        "best_single": {"index": best, "quality": bq, "cost": bc},
        "c_min": c_min,
        "c_max": c_max,
    }


def _draw_curve(ax: Any, c: ArrayLike, q: ArrayLike, label: str, color: str, main: bool) -> None:
    """One router: its λ sweep as dots and its non-decreasing hull as a line (the main router's
    solid and thick, a baseline's dashed)."""
    c_arr = np.asarray(c, dtype=np.float64)
    q_arr = np.asarray(q, dtype=np.float64)
    ok = np.isfinite(c_arr) & np.isfinite(q_arr) & (c_arr > 0)
    ax.scatter(c_arr[ok], q_arr[ok], s=9 if main else 5, color=color, alpha=0.45, zorder=4 if main else 2)
    hc, hq = convex_hull_nondecreasing(c_arr[ok], q_arr[ok])
    if hc.size:
        ax.plot(hc, hq, "-" if main else "--", color=color, lw=2.4 if main else 1.3, label=label,
                zorder=5 if main else 3)


def _draw_single_models(ax: Any, single_points: Mapping[str, tuple[float, float]]) -> None:
    """The single models as black stars labelled by name (without an ``org/`` prefix), and their
    non-decreasing hull (what mixing single models reaches, the AIQ reference) dotted."""
    pts = [(lab, float(c), float(q)) for lab, (c, q) in single_points.items()
           if np.isfinite(c) and np.isfinite(q) and c > 0]
    if not pts:
        return
    cs, qs = np.array([p[1] for p in pts]), np.array([p[2] for p in pts])
    ax.scatter(cs, qs, marker="*", s=80, color="black", zorder=6, label="single models")
    hc, hq = convex_hull_nondecreasing(cs, qs)
    ax.plot(hc, hq, ":", color="black", lw=1, zorder=1, label="single models (hull)")
    _label_points(ax, [(lab.rsplit("/", 1)[-1], c, q) for lab, c, q in pts], np.log10(cs), qs)


def _label_points(ax: Any, pts: list[tuple[str, float, float]], x: FloatArray, y: FloatArray) -> None:
    """Label each point beside it, on the first side (below-right, above-right, below-left,
    above-left) whose spot no earlier label took, so that neighbouring points' labels do not overlap;
    ``x``/``y`` are the points' plotted positions (log cost, quality) that nearness is judged in."""
    span_x, span_y = max(float(np.ptp(x)), 1e-9), max(float(np.ptp(y)), 1e-9)
    sides = [((4, -9), "left"), ((4, 4), "left"), ((-4, -9), "right"), ((-4, 4), "right")]
    taken: list[tuple[float, float, int]] = []
    for i in np.argsort(x):
        near = {side for tx, ty, side in taken
                if abs(tx - x[i]) / span_x < 0.12 and abs(ty - y[i]) / span_y < 0.05}
        side = next((k for k in range(len(sides)) if k not in near), 0)
        taken.append((float(x[i]), float(y[i]), side))
        (dx, dy), ha = sides[side]
        label, c, q = pts[i]
        ax.annotate(label, (c, q), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=7, color="0.25")


def plot_cost_quality(curves: Mapping[str, tuple[ArrayLike, ArrayLike]],
                      single_points: Mapping[str, tuple[float, float]],
                      path: str | Path, title: str = "Cost vs quality") -> Path:
    """Save a PNG: each router's λ sweep (dots) and its non-decreasing hull (line), the first of
    ``curves`` (the router under evaluation) drawn solid and on top, the others (baselines) dashed,
    plus the single models ``name -> (cost, quality)`` as labelled stars with their hull dotted;
    log-scaled cost axis (non-positive costs are left out). Uses the Agg canvas directly, so no
    pyplot/global backend state is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, (label, (c, q)) in enumerate(curves.items()):
        _draw_curve(ax, c, q, label, f"C{i % 10}", main=i == 0)
    _draw_single_models(ax, single_points)
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per request (USD, log scale)")
    ax.set_ylabel("mean quality")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if curves or single_points:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
