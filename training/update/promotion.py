"""The safe-promotion check of `neural-router update`: the current and a new router's greedy policies,
replayed through the service's own policy on held-out logged requests, compared off-policy (IPS, SNIPS,
doubly robust and the direct method, with bootstrap intervals; :mod:`neural_router.feedback.offpolicy`),
and the verdict that promotes the new one or not. ``run_update`` calls :func:`check_on_logs` and
:func:`promotion_verdict`; ``benchmarks/gate_rejudge.py`` re-runs them on stored candidates.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from neural_router.feedback import offpolicy as op
from neural_router.feedback.store import replay_context
from neural_router.inference.interface import Predictions
from neural_router.policy.routing import Preferences
from neural_router.pool import ModelPool
from neural_router.training.activation_cache import ActivationCache, predict_router
from neural_router.training.config import PREF_KEYS, UpdateConfig, parse_promote_on

REWARD_CALIBRATION = UpdateConfig.model_fields["reward_calibration"].default
CALIBRATION_MAX = 5000  # most recent training logs the promotion check's reward model is calibrated on


# --------------------------------------------------------------------------------------------------
# off-policy comparison of two routers on logged requests


def pref_weights(prefs: Preferences | None, logged: list[dict[str, float]]) -> tuple[np.ndarray, ...]:
    """Per-row (quality, cost, latency) weights: fixed ``prefs``, or each request's logged ones."""
    if prefs is not None:
        return tuple(np.full(len(logged), float(getattr(prefs, k))) for k in PREF_KEYS)
    defaults = asdict(Preferences())
    return tuple(np.array([float(d.get(k, defaults[k])) for d in logged]) for k in PREF_KEYS)


def policy_probs(pred: Predictions, models: list[str], pool: ModelPool, weights: tuple[np.ndarray, ...],
                 contexts: list[dict[str, Any]] | None = None) -> np.ndarray:
    """[N, len(models)] one-hot of the router's greedy choice, replayed through the service's own
    policy (:func:`neural_router.policy.route`) with each request's preferences (``weights``) and,
    where logged, its ``contexts`` (request features and constraints, see ``LoggedDecision.context``):
    capabilities such as context windows and modalities, allowed/denied models and soft constraints
    apply exactly as they did live. Models the router does not know get probability 0."""
    from neural_router.policy.routing import Capabilities, route

    routed = list(pred.models)
    caps = Capabilities.from_pool(pool.subset(routed))
    col = {m: j for j, m in enumerate(models)}
    probs = np.zeros((len(pred), len(models)))
    for i in range(len(pred)):
        ctx = (contexts[i] if contexts is not None else None) or {}
        prefs = Preferences(*(float(w[i]) for w in weights))
        features, constraints = replay_context(ctx, routed)
        d = route(routed, pred.quality[i], pred.cost_usd[i], pred.latency_ms[i], prefs, constraints, caps,
                  features, int(pred.input_tokens[i]))
        if d.model in col:
            probs[i, col[d.model]] = 1.0
    return probs


def logged_request(decision, outcome, pool: ModelPool) -> dict[str, Any]:
    """One logged (decision, chosen outcome) pair as :func:`compare_on_logs` reads it."""
    return {"prompt": decision.prompt, "model": pool.resolve(decision.model) or decision.model,
            "propensity": decision.propensity, "score": outcome.score, "cost_usd": outcome.cost_usd,
            "latency_ms": outcome.latency_ms,
            "predictions": {(pool.resolve(k) or k): v for k, v in decision.predictions.items()},
            "preferences": decision.preferences, "exploration": decision.exploration,
            "context": decision.context}


def _quality_columns(models: list[str], pred_current: Predictions, pred_new: Predictions
                     ) -> tuple[np.ndarray, np.ndarray]:
    """([N, M] new, [N, M] current) predicted quality in the order of ``models`` (the new router's
    for a model the current one lacks)."""
    cols = [pred_new.models.index(m) for m in models]
    q_new = pred_new.quality[:, cols].astype(np.float64)
    q_cur = q_new.copy()
    for j, m in enumerate(models):
        if m in pred_current.models:
            q_cur[:, j] = pred_current.quality[:, pred_current.models.index(m)]
    return q_new, q_cur


def reward_model_shift(logged: list[dict[str, Any]], models: list[str], pred_current: Predictions,
                       pred_new: Predictions, strength: float = REWARD_CALIBRATION) -> np.ndarray:
    """[M] calibration of the promotion check's reward model (the mean of the two routers' predicted
    qualities): per model, the mean observed score minus that prediction over the logged requests
    that chose it, shrunk toward the mean over all of them by ``strength`` pseudo-requests
    (:func:`neural_router.offpolicy.action_shift`). Fitted on the logs the update trained on, not
    on the held-out ones it is then applied to."""
    q_new, q_cur = _quality_columns(models, pred_current, pred_new)
    col = {m: j for j, m in enumerate(models)}
    chosen = np.array([col.get(d["model"], -1) for d in logged], dtype=np.int64)
    rows = np.arange(len(logged))
    pred = ((q_new + q_cur) / 2)[rows, np.maximum(chosen, 0)]
    score = np.array([d["score"] for d in logged], dtype=np.float64)
    return op.action_shift(chosen, score, pred, len(models), strength)


def _reward_model(logged: list[dict[str, Any]], models: list[str], pred_current: Predictions,
                  pred_new: Predictions, quality_shift: np.ndarray | None, weights: tuple[np.ndarray, ...],
                  cmax: np.ndarray, lmax: np.ndarray) -> np.ndarray:
    """[N, M] predicted utilities of the doubly robust and direct-method estimates, shared by both
    policies: the mean of the two routers' predicted qualities (the new router's alone for a model
    the current one lacks), so that neither router is judged by its own predictions (whose argmax
    is its greedy choice), plus ``quality_shift`` (its calibration on the logs the update trained
    on). Cost and latency as logged with the decision (the new router's own estimate, capped at the
    logged maximum, for a model the logger lacked), so that it stays on the reward's scale even if
    cost predictions moved."""
    cols = [pred_new.models.index(m) for m in models]
    q_new, q_cur = _quality_columns(models, pred_current, pred_new)
    q_hat = (q_new + q_cur) / 2
    if quality_shift is not None:
        q_hat = np.clip(q_hat + np.asarray(quality_shift, dtype=np.float64)[None, :], 0.0, 1.0)
    logged_est = {f: np.array([[d["predictions"].get(m, {}).get(f, np.nan) for m in models] for d in logged],
                              dtype=np.float64) for f in ("cost_usd", "latency_ms")}
    c_hat = np.where(np.isfinite(logged_est["cost_usd"]), logged_est["cost_usd"],
                     np.minimum(pred_new.cost_usd[:, cols], cmax[:, None]))
    l_hat = np.where(np.isfinite(logged_est["latency_ms"]), logged_est["latency_ms"],
                     np.minimum(pred_new.latency_ms[:, cols], lmax[:, None]))
    return op.utilities(q_hat, c_hat, l_hat, *weights, cost_max=cmax, latency_max=lmax)


def compare_on_logs(logged: list[dict[str, Any]], models: list[str], pred_current: Predictions,
                    pred_new: Predictions, pool: ModelPool, prefs: Preferences | None,
                    n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
                    quality_shift: np.ndarray | None = None) -> dict[str, Any]:
    """IPS / SNIPS / DR / DM values of the current and the new router's greedy policies on logged
    requests (``logged``: dicts with model, propensity, score, cost_usd, latency_ms, predictions,
    preferences and, optionally, context, as :func:`logged_request` makes them). ``quality_shift``
    ([M], :func:`reward_model_shift`) is added to the reward model's predicted qualities."""
    n = len(logged)
    weights = pref_weights(prefs, [d["preferences"] for d in logged])
    col = {m: j for j, m in enumerate(models)}
    chosen = np.array([col.get(d["model"], -1) for d in logged], dtype=np.int64)
    prop = np.array([d["propensity"] for d in logged], dtype=np.float64)
    cmax = np.array([max(v["cost_usd"] for v in d["predictions"].values()) for d in logged])
    lmax = np.array([max(v["latency_ms"] for v in d["predictions"].values()) for d in logged])
    cost = np.array([d["cost_usd"] if d["cost_usd"] is not None else d["predictions"][d["model"]]["cost_usd"]
                     for d in logged], dtype=np.float64)
    lat = np.array([d["latency_ms"] if d["latency_ms"] is not None
                    else d["predictions"][d["model"]]["latency_ms"] for d in logged], dtype=np.float64)
    score = np.array([d["score"] for d in logged], dtype=np.float64)
    reward = op.observed_reward(score, cost, lat, cmax, lmax, *weights)
    contexts = [d.get("context") or {} for d in logged]
    probs_cur = policy_probs(pred_current, models, pool, weights, contexts)
    probs_new = policy_probs(pred_new, models, pool, weights, contexts)
    rhat = _reward_model(logged, models, pred_current, pred_new, quality_shift, weights, cmax, lmax)
    cmp = op.compare_policies(chosen, prop, reward, probs_cur, probs_new, reward_model_b=rhat,
                              n_boot=n_boot, alpha=alpha, seed=seed)
    # how much the DR verdict leans on a few heavily weighted outcomes (benchmarks/gate_accuracy.py)
    by_clip = op.dr_difference_by_clip(chosen, prop, reward, probs_cur, probs_new, rhat)
    logged_models = [set(d["predictions"]) for d in logged]
    new_choice = [models[j] for j in probs_new.argmax(1)]
    unsupported = float(np.mean([c not in s for c, s in zip(new_choice, logged_models)])) if n else 0.0

    def summary(res):
        return {k: (v.to_dict() if isinstance(v, op.Estimate) else v) for k, v in res.items() if k != "logging"}

    return {"n": n, "logging": cmp["a"]["logging"].to_dict(), "current": summary(cmp["a"]),
            "new": summary(cmp["b"]), "difference": {k: v.to_dict() for k, v in cmp["diff"].items()},
            "changed_decisions": float((probs_cur.argmax(1) != probs_new.argmax(1)).mean()) if n else 0.0,
            "new_choice_unsupported_by_logs": unsupported,
            "exploration": sorted({d.get("exploration", "") for d in logged}),
            "dr_difference_by_clip": by_clip}


def check_on_logs(current: tuple, new: tuple, pool: ModelPool, models: list[str],
                  logged: list[dict[str, Any]], fit: list[dict[str, Any]], prefs: Preferences | None,
                  reward_calibration: float | None = REWARD_CALIBRATION, n_boot: int = 1000, alpha: float = 0.05,
                  seed: int = 0, cache: ActivationCache | None = None) -> dict[str, Any]:
    """The promotion check: :func:`compare_on_logs` of the ``current`` and ``new`` routers (each a
    ``(model, tokenizer, TrainConfig)``) on the held-out ``logged`` requests, its reward model
    calibrated on ``fit`` (the logged requests the update trained on; the most recent
    ``CALIBRATION_MAX``) unless ``reward_calibration`` is None. Adds ``reward_model``: what the
    calibration did."""
    def both(prompts):
        return tuple(predict_router(m, t, pool, prompts, c, cache) for m, t, c in (current, new))

    fit = fit[-CALIBRATION_MAX:] if reward_calibration is not None else []
    shift = reward_model_shift(fit, models, *both([d["prompt"] for d in fit]), reward_calibration) if fit else None
    res = compare_on_logs(logged, models, *both([d["prompt"] for d in logged]), pool, prefs, n_boot, alpha,
                          seed, quality_shift=shift)
    res["reward_model"] = {"calibration": reward_calibration, "n_calibration": len(fit),
                           "quality_shift": dict(zip(models, shift.round(4).tolist())) if shift is not None else None}
    return res


def promotion_verdict(comparison: dict[str, Any], min_improvement: float = 0.0,
                      require_ci: bool = False, promote_on: str | tuple[str, ...] = ("dm",)
                      ) -> tuple[bool, str]:
    """Promote only when new - current exceeds ``min_improvement`` under every estimator named in
    ``promote_on`` (point estimates; with ``require_ci`` the lower ends of their confidence
    intervals)."""
    names = parse_promote_on(promote_on)
    n = comparison.get("n", 0)
    if not n:
        return False, "no held-out logged requests to evaluate on"
    key = "ci_low" if require_ci else "value"
    missing = [m for m in names if m not in comparison.get("difference", {})]
    if missing:
        raise ValueError(f"promote_on: the comparison has no {', '.join(map(repr, missing))} estimate (it has "
                         f"{', '.join(comparison.get('difference', {})) or 'none'}); a comparison made "
                         "before that estimator existed cannot be judged by it")
    diffs = {m: comparison["difference"][m][key] for m in names}
    promote = bool(all(d > min_improvement for d in diffs.values()))
    what = "lower CI bound of new - current" if require_ci else "new - current"
    verdict = ("" if promote else "not ") + ("above" if len(names) == 1 else "all above")
    return promote, (f"{what}: " + ", ".join(f"{m.upper()} {d:+.4f}" for m, d in diffs.items())
                     + f" ({verdict} min_improvement {min_improvement:g}) on {n} held-out logged requests")
