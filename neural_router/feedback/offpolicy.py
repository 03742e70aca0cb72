"""Off-policy evaluation of routing policies from logged bandit feedback (pure numpy).

A router only sees the outcome of the model it chose. Given logged rows ``(chosen action a_i, its
logging probability p_i, observed reward r_i)`` and a *target* policy's action probabilities
``pi[i, a]`` on the same requests, these estimators say how well the target policy would have done:

* **logging value**: ``mean(r)``, the value of the policy that produced the log;
* **IPS** (inverse propensity scoring): ``mean(w_i * r_i)`` with ``w_i = pi[i, a_i] / p_i``.
  Unbiased whenever ``p_i > 0`` for every action the target can take; high variance;
* **SNIPS** (self-normalised IPS): ``sum(w * r) / sum(w)``. Slightly biased, much lower variance,
  invariant to a constant shift of the reward;
* **DR** (doubly robust): ``mean(sum_a pi[i, a] * rhat[i, a] + w_i * (r_i - rhat[i, a_i]))`` with a
  reward model ``rhat`` (e.g. the router's predicted quality or predicted utility). Unbiased when the
  propensities are right, whatever ``rhat`` is; the better ``rhat``, the lower the variance;
* **DM** (direct method): ``mean(sum_a pi[i, a] * rhat[i, a])``, the reward model alone. Biased as
  far as ``rhat`` is, but free of the importance weights: with few logged rows and small exploration
  probabilities DR's correction rests on a handful of outcomes weighted ``1/p`` (tens), while a
  reward model calibrated on the logged outcomes (:func:`action_shift`) keeps DM steady.

Confidence intervals are percentile bootstrap intervals over logged rows. :func:`compare_policies`
bootstraps the *paired* difference of two target policies on the same rows, which is much tighter
than comparing two separate intervals.

Conventions: N logged rows, K actions (models). ``chosen[i]`` is the column of the logged action in
``target_probs``/``reward_model``; ``-1`` marks an action outside the target's action space (the
target never takes it: its weight is 0). A deterministic target policy is the one-hot of the argmax
of its utility (:func:`greedy_probs`). Exploration policies for logging (:func:`epsilon_greedy_probs`,
:func:`softmax_probs`) give every action a positive probability, which is what makes IPS and DR
unbiased for any target; a greedy logger (propensity 1) can only evaluate policies that agree with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from neural_router.policy.routing import weighted_utility

__all__ = [
    "Estimate",
    "utilities",
    "observed_reward",
    "greedy_probs",
    "epsilon_greedy_probs",
    "softmax_probs",
    "sample_actions",
    "importance_weights",
    "logging_value",
    "ips",
    "snips",
    "doubly_robust",
    "evaluate_policy",
    "compare_policies",
]


@dataclass(frozen=True)
class Estimate:
    """A policy-value estimate with its bootstrap confidence interval."""

    method: str
    value: float
    ci_low: float
    ci_high: float
    std_err: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# utilities, rewards and policies


def _weights(w: float | np.ndarray, n: int, name: str) -> np.ndarray:
    a = np.broadcast_to(np.asarray(w, dtype=np.float64), (n,))
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"{name} must be finite and >= 0")
    return a


def utilities(quality: np.ndarray, cost: np.ndarray, latency: np.ndarray,
              quality_weight: float | np.ndarray = 1.0, cost_weight: float | np.ndarray = 0.0,
              latency_weight: float | np.ndarray = 0.0, cost_max: np.ndarray | None = None,
              latency_max: np.ndarray | None = None) -> np.ndarray:
    """[N, K] estimates -> [N, K] utility ``qw*q - cw*cost/cost_max - lw*latency/latency_max``.

    The policy's formula (:func:`neural_router.policy.routing.weighted_utility`) with checked shapes
    and weights: cost and latency are normalised per request, by the row maximum unless
    ``cost_max[N]`` / ``latency_max[N]`` are given (use fixed maxima to make a utility comparable
    between routers). Weights may be scalars or per-row arrays ``[N]``; negative or non-finite ones
    raise ValueError.
    """
    q = np.asarray(quality, dtype=np.float64)
    if q.ndim != 2:
        raise ValueError(f"quality must be [N, K], got shape {q.shape}")
    n = q.shape[0]
    c, lat = np.asarray(cost, dtype=np.float64), np.asarray(latency, dtype=np.float64)
    if c.shape != q.shape or lat.shape != q.shape:
        raise ValueError(f"cost {c.shape} and latency {lat.shape} must match quality {q.shape}")
    qw, cw, lw = (_weights(w, n, name)[:, None] for w, name in (
        (quality_weight, "quality_weight"), (cost_weight, "cost_weight"), (latency_weight, "latency_weight")))
    return weighted_utility(q, c, lat, qw, cw, lw, cost_max, latency_max)


def observed_reward(score: np.ndarray, cost: np.ndarray, latency: np.ndarray, cost_max: np.ndarray,
                    latency_max: np.ndarray, quality_weight: float | np.ndarray = 1.0,
                    cost_weight: float | np.ndarray = 0.0,
                    latency_weight: float | np.ndarray = 0.0) -> np.ndarray:
    """[N] reward of the logged outcomes on the same scale as :func:`utilities` (fixed maxima)."""
    s = np.asarray(score, dtype=np.float64)[:, None]
    return utilities(s, np.asarray(cost, dtype=np.float64)[:, None],
                     np.asarray(latency, dtype=np.float64)[:, None], quality_weight, cost_weight,
                     latency_weight, cost_max, latency_max)[:, 0]


def _masked(utility: np.ndarray, eligible: np.ndarray | None) -> np.ndarray:
    u = np.asarray(utility, dtype=np.float64)
    if u.ndim != 2 or u.shape[1] == 0:
        raise ValueError(f"utility must be [N, K] with K >= 1, got shape {u.shape}")
    if eligible is None:
        ok = np.isfinite(u)
    else:
        ok = np.asarray(eligible, dtype=bool) & np.isfinite(u)
    if not ok.any(axis=1).all():
        raise ValueError("every row needs at least one eligible action with a finite utility")
    return np.where(ok, u, -np.inf)


def greedy_probs(utility: np.ndarray, eligible: np.ndarray | None = None,
                 tie_break: np.ndarray | None = None) -> np.ndarray:
    """[N, K] one-hot of the argmax utility (a deterministic policy). Ties go to the smallest
    ``tie_break`` value (e.g. cost), then to the lowest index."""
    u = _masked(utility, eligible)
    best = u.max(axis=1, keepdims=True)
    tied = u >= best - 1e-12 * np.maximum(1.0, np.abs(best))
    if tie_break is not None:
        tb = np.where(tied, np.asarray(tie_break, dtype=np.float64), np.inf)
        tied &= tb <= tb.min(axis=1, keepdims=True)
    probs = np.zeros_like(u)
    probs[np.arange(len(u)), np.argmax(tied, axis=1)] = 1.0
    return probs


def epsilon_greedy_probs(utility: np.ndarray, epsilon: float, eligible: np.ndarray | None = None,
                         tie_break: np.ndarray | None = None) -> np.ndarray:
    """[N, K]: the greedy action with probability 1 - epsilon, a uniformly random eligible one with
    probability epsilon (so every eligible action has probability >= epsilon / #eligible)."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    u = _masked(utility, eligible)
    ok = np.isfinite(u)
    uniform = ok / ok.sum(axis=1, keepdims=True)
    return (1.0 - epsilon) * greedy_probs(u, None, tie_break) + epsilon * uniform


def softmax_probs(utility: np.ndarray, temperature: float, eligible: np.ndarray | None = None,
                  floor: float = 0.0) -> np.ndarray:
    """[N, K] Boltzmann exploration ``p ∝ exp(u / temperature)`` over eligible actions, mixed with a
    uniform ``floor`` share (``floor`` = minimum total probability spread uniformly)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    u = _masked(utility, eligible)
    z = (u - u.max(axis=1, keepdims=True)) / temperature
    e = np.where(np.isfinite(u), np.exp(z), 0.0)
    p = e / e.sum(axis=1, keepdims=True)
    ok = np.isfinite(u)
    return (1.0 - floor) * p + floor * ok / ok.sum(axis=1, keepdims=True)


def sample_actions(probs: np.ndarray, rng: np.random.Generator | int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Draw one action per row; returns ``(actions[N], propensities[N])``."""
    p = np.asarray(probs, dtype=np.float64)
    rng = np.random.default_rng(rng)
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    a = (rng.random((len(p), 1)) > cdf).sum(axis=1)
    a = np.minimum(a, p.shape[1] - 1)
    return a.astype(np.int64), p[np.arange(len(p)), a]


# --------------------------------------------------------------------------------------------------
# estimators


def _check(chosen, propensity, reward, target_probs, reward_model=None):
    a = np.asarray(chosen)
    p = np.asarray(propensity, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    pi = np.asarray(target_probs, dtype=np.float64)
    n = len(a)
    if a.ndim != 1 or p.shape != (n,) or r.shape != (n,):
        raise ValueError(f"chosen, propensity and reward must be 1-D of the same length "
                         f"(got {a.shape}, {p.shape}, {r.shape})")
    if not np.issubdtype(a.dtype, np.integer):
        if n and not np.all(np.equal(np.mod(a, 1), 0)):
            raise ValueError("chosen must hold integer action indices")
        a = a.astype(np.int64)
    if pi.ndim != 2 or pi.shape[0] != n:
        raise ValueError(f"target_probs must be [N={n}, K], got {pi.shape}")
    k = pi.shape[1]
    if n and (a.min() < -1 or a.max() >= k):
        raise ValueError(f"chosen holds indices outside [-1, {k - 1}]")
    if not np.isfinite(p).all() or (p <= 0).any() or (p > 1 + 1e-9).any():
        raise ValueError("propensities must be in (0, 1]; a logged action that the logging policy "
                         "could not take (propensity 0) cannot be re-weighted")
    if not np.isfinite(r).all():
        raise ValueError("rewards must be finite")
    if not np.isfinite(pi).all() or (pi < -1e-12).any() or (pi.sum(axis=1) > 1 + 1e-6).any():
        raise ValueError("target_probs must be non-negative with rows summing to at most 1")
    rm = None
    if reward_model is not None:
        rm = np.asarray(reward_model, dtype=np.float64)
        if rm.shape != pi.shape:
            raise ValueError(f"reward_model must have the shape of target_probs {pi.shape}, got {rm.shape}")
        if not np.isfinite(rm).all():
            raise ValueError("reward_model must be finite")
    return a, p, r, pi, rm


def importance_weights(chosen: np.ndarray, propensity: np.ndarray, target_probs: np.ndarray,
                       clip: float | None = None) -> np.ndarray:
    """[N] ``w_i = pi[i, a_i] / p_i`` (0 where ``a_i == -1``), optionally clipped at ``clip``."""
    a, p, _, pi, _ = _check(chosen, propensity, np.zeros(len(np.asarray(chosen))), target_probs)
    pa = np.where(a >= 0, pi[np.arange(len(a)), np.maximum(a, 0)], 0.0)
    w = pa / p
    return np.minimum(w, clip) if clip is not None else w


def _bootstrap(parts: list[tuple[np.ndarray, np.ndarray, float]], n_boot: int, alpha: float,
               seed: int | None) -> tuple[np.ndarray, float]:
    """Point estimate and bootstrap replicates of ``sum_k sign_k * sum(num_k) / sum(den_k)``, rows
    resampled jointly for every part (a paired bootstrap)."""
    n = len(parts[0][0])

    def stat(cnt):
        tot = 0.0
        for num, den, sign in parts:
            d = cnt @ den
            tot = tot + sign * np.divide(cnt @ num, d, out=np.zeros_like(d, dtype=np.float64), where=d > 0)
        return tot

    point = float(stat(np.ones((1, n)))[0])
    if n_boot <= 0 or n < 2:
        return np.array([point]), point
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_boot, int(2e7 // max(n, 1))))
    reps = []
    done = 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        cnt = rng.multinomial(n, np.full(n, 1.0 / n), size=m).astype(np.float64)
        reps.append(stat(cnt))
        done += m
    return np.concatenate(reps), point


def _estimate(method: str, parts, n: int, n_boot: int, alpha: float, seed: int | None) -> Estimate:
    if n == 0:
        return Estimate(method, float("nan"), float("nan"), float("nan"), float("nan"), 0)
    reps, point = _bootstrap(parts, n_boot, alpha, seed)
    if len(reps) < 2:
        return Estimate(method, point, point, point, 0.0, n)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return Estimate(method, point, float(lo), float(hi), float(reps.std(ddof=1)), n)


def _terms(method: str, a, p, r, pi, rm, clip):
    """(numerator[N], denominator[N]) of a ratio estimator sum(num) / sum(den)."""
    n = len(a)
    rows = np.arange(n)
    pa = np.where(a >= 0, pi[rows, np.maximum(a, 0)], 0.0)
    w = pa / p
    if clip is not None:
        w = np.minimum(w, clip)
    if method == "ips":
        return w * r, np.ones(n)
    if method == "snips":
        return w * r, w
    if method == "dr":
        if rm is None:
            raise ValueError("the doubly robust estimate needs a reward_model [N, K]")
        direct = (pi * rm).sum(axis=1)
        rhat_a = np.where(a >= 0, rm[rows, np.maximum(a, 0)], 0.0)
        return direct + w * (r - rhat_a), np.ones(n)
    if method == "dm":
        if rm is None:
            raise ValueError("the direct-method estimate needs a reward_model [N, K]")
        return (pi * rm).sum(axis=1), np.ones(n)
    raise ValueError(f"unknown estimator {method!r}")


def logging_value(reward: np.ndarray, n_boot: int = 1000, alpha: float = 0.05,
                  seed: int | None = 0) -> Estimate:
    """Value of the logging policy itself: the mean observed reward, with a bootstrap CI."""
    r = np.asarray(reward, dtype=np.float64)
    if r.ndim != 1 or not np.isfinite(r).all():
        raise ValueError("reward must be a 1-D array of finite numbers")
    return _estimate("logging", [(r, np.ones(len(r)), 1.0)], len(r), n_boot, alpha, seed)


def _one(method, chosen, propensity, reward, target_probs, reward_model=None, clip=None,
         n_boot=1000, alpha=0.05, seed=0) -> Estimate:
    a, p, r, pi, rm = _check(chosen, propensity, reward, target_probs, reward_model)
    num, den = _terms(method, a, p, r, pi, rm, clip)
    return _estimate(method, [(num, den, 1.0)], len(a), n_boot, alpha, seed)


def ips(chosen, propensity, reward, target_probs, clip: float | None = None, n_boot: int = 1000,
        alpha: float = 0.05, seed: int | None = 0) -> Estimate:
    """Inverse propensity scoring estimate of the target policy's value."""
    return _one("ips", chosen, propensity, reward, target_probs, None, clip, n_boot, alpha, seed)


def snips(chosen, propensity, reward, target_probs, clip: float | None = None, n_boot: int = 1000,
          alpha: float = 0.05, seed: int | None = 0) -> Estimate:
    """Self-normalised IPS estimate (NaN-free: 0 when no logged action has target weight)."""
    return _one("snips", chosen, propensity, reward, target_probs, None, clip, n_boot, alpha, seed)


def doubly_robust(chosen, propensity, reward, target_probs, reward_model, clip: float | None = None,
                  n_boot: int = 1000, alpha: float = 0.05, seed: int | None = 0) -> Estimate:
    """Doubly robust estimate with reward model ``reward_model[N, K]`` (predicted reward per action)."""
    return _one("dr", chosen, propensity, reward, target_probs, reward_model, clip, n_boot, alpha, seed)


def evaluate_policy(chosen, propensity, reward, target_probs, reward_model=None,
                    clip: float | None = None, n_boot: int = 1000, alpha: float = 0.05,
                    seed: int | None = 0) -> dict[str, Any]:
    """Every estimate of one target policy: ``{"logging", "ips", "snips", "dr"?, "dm"?}`` as
    :class:`Estimate` objects, plus ``"match_rate"`` (mean target probability of the logged action)
    and ``"effective_n"`` (``sum(w)^2 / sum(w^2)``: how many rows the IPS estimate really rests on)."""
    a, p, r, pi, rm = _check(chosen, propensity, reward, target_probs, reward_model)
    out: dict[str, Any] = {"logging": logging_value(r, n_boot, alpha, seed)}
    for m in ("ips", "snips") + (("dr", "dm") if rm is not None else ()):
        num, den = _terms(m, a, p, r, pi, rm, clip)
        out[m] = _estimate(m, [(num, den, 1.0)], len(a), n_boot, alpha, seed)
    w = importance_weights(a, p, pi, clip) if len(a) else np.zeros(0)
    out["match_rate"] = float(np.where(a >= 0, pi[np.arange(len(a)), np.maximum(a, 0)], 0.0).mean()) if len(a) else float("nan")
    out["effective_n"] = float(w.sum() ** 2 / (w ** 2).sum()) if len(a) and (w > 0).any() else 0.0
    return out


def compare_policies(chosen, propensity, reward, probs_a, probs_b, reward_model_a=None,
                     reward_model_b=None, clip: float | None = None, n_boot: int = 1000,
                     alpha: float = 0.05, seed: int | None = 0) -> dict[str, Any]:
    """Policy B vs policy A on the same logged rows.

    Returns ``{"a": evaluate_policy(A), "b": evaluate_policy(B), "diff": {method: Estimate of
    value(B) - value(A)}}`` for IPS, SNIPS and, with a reward model, DR and the direct method (DM);
    the difference intervals come from a paired bootstrap. DR and DM use ``reward_model_b`` for B
    and ``reward_model_a`` (default: the same as B's) for A.
    """
    rm_b = reward_model_b
    rm_a = reward_model_a if reward_model_a is not None else reward_model_b
    a, p, r, pi_a, rma = _check(chosen, propensity, reward, probs_a, rm_a)
    _, _, _, pi_b, rmb = _check(chosen, propensity, reward, probs_b, rm_b)
    out: dict[str, Any] = {"a": evaluate_policy(a, p, r, pi_a, rma, clip, n_boot, alpha, seed),
                           "b": evaluate_policy(a, p, r, pi_b, rmb, clip, n_boot, alpha, seed),
                           "diff": {}}
    for m in ("ips", "snips") + (("dr", "dm") if rmb is not None else ()):
        na, da = _terms(m, a, p, r, pi_a, rma, clip)
        nb, db = _terms(m, a, p, r, pi_b, rmb, clip)
        out["diff"][m] = _estimate(m, [(nb, db, 1.0), (na, da, -1.0)], len(a), n_boot, alpha, seed)
    return out


def action_shift(chosen: np.ndarray, observed: np.ndarray, predicted: np.ndarray, n_actions: int,
                 strength: float = 10.0) -> np.ndarray:
    """[K] per-action calibration of a reward model: the mean of ``observed - predicted`` over the
    logged rows that took each action, shrunk toward the mean over all rows by ``strength``
    pseudo-rows (an action with no logged rows gets the overall mean; no rows at all: zeros).
    ``predicted[i]`` is the model's prediction for the action row ``i`` took."""
    a = np.asarray(chosen, dtype=np.int64)
    obs, pred = np.asarray(observed, dtype=np.float64), np.asarray(predicted, dtype=np.float64)
    if a.ndim != 1 or obs.shape != a.shape or pred.shape != a.shape:
        raise ValueError(f"chosen, observed and predicted must be 1-D of the same length (got {a.shape}, "
                         f"{obs.shape}, {pred.shape})")
    resid = obs - pred
    if not strength >= 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    ok = (a >= 0) & (a < n_actions) & np.isfinite(resid)
    a, resid = a[ok], resid[ok]
    if not len(a):
        return np.zeros(n_actions)
    overall = float(resid.mean())
    total = np.bincount(a, weights=resid, minlength=n_actions)
    count = np.bincount(a, minlength=n_actions).astype(np.float64)
    return np.where(count + strength > 0, (total + strength * overall) / np.maximum(count + strength, 1e-12),
                    overall)


def dr_difference_by_clip(chosen, propensity, reward, probs_a, probs_b, reward_model,
                          clips: tuple[float, ...] = (0.0, 1.0, 3.0, 10.0, 30.0)) -> dict[str, float]:
    """Point estimates of the doubly robust value(B) - value(A), with the importance weights clipped at
    each of ``clips`` (0: the direct method alone, no correction from logged outcomes), keyed by the
    clip as a string. A verdict whose sign flips between clips rests on a few heavily weighted
    outcomes."""
    a, p, r, pi_a, rm = _check(chosen, propensity, reward, probs_a, reward_model)
    _, _, _, pi_b, _ = _check(chosen, propensity, reward, probs_b, reward_model)
    if not len(a):
        return {}
    out = {}
    for c in clips:
        if not (isinstance(c, (int, float)) and c >= 0):
            raise ValueError(f"clips: {c!r} must be a number >= 0")
        nb, _ = _terms("dr", a, p, r, pi_b, rm, float(c))
        na, _ = _terms("dr", a, p, r, pi_a, rm, float(c))
        out[f"{c:g}"] = float(nb.mean() - na.mean())
    return out
