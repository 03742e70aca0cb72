"""A trust region on the policy: scale an update back toward the router it started from until at
most a given share of the logged traffic moves to another model."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from neural_router.modeling.model import HEADS, RouterModel
from neural_router.policy.routing import Preferences
from neural_router.pool import ModelPool
from neural_router.training.activation_cache import ActivationCache, predict_router
from neural_router.training.config import TrainConfig
from neural_router.training.update.promotion import policy_probs, pref_weights

log = logging.getLogger(__name__)


def share_shift(probs_a: np.ndarray, probs_b: np.ndarray) -> float:
    """The share of traffic that moves to another model between two routings of the same requests
    (``[N, M]`` choice probabilities): the total-variation distance of the per-model traffic shares,
    ``0.5 * sum_m |share_a[m] - share_b[m]|``. 0 = every model keeps its share (requests may still
    swap models), 1 = all traffic moves to models that had none."""
    if not len(probs_a):
        return 0.0
    return float(0.5 * np.abs(probs_a.mean(0) - probs_b.mean(0)).sum())


def largest_scale(shift_at, max_shift: float, steps: int = 7) -> tuple[float, float, float]:
    """The largest ``t`` in [0, 1] (to ``2**-steps``) whose ``shift_at(t)`` is at most ``max_shift``,
    by bisection (``shift_at(0)`` is taken as 0: no change). Returns ``(t, shift_at(t), shift_at(1))``."""
    full = shift_at(1.0)
    if full <= max_shift:
        return 1.0, full, full
    lo, lo_shift, hi = 0.0, 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        s = shift_at(mid)
        if s <= max_shift:
            lo, lo_shift = mid, s
        else:
            hi = mid
    return lo, lo_shift, full


def parent_state_like(parent: RouterModel, model: RouterModel) -> dict[str, Any]:
    """The parent's weights in ``model``'s layout: head rows by model name; a model the parent lacks
    (a new pool member) keeps ``model``'s own row, so a trust region never holds back its start."""
    ps, out = parent.state_dict(), {}
    old = list(parent.config.models)
    for k, v in model.state_dict().items():
        if k.split(".")[0] in HEADS:
            rows = v.detach().clone()
            for j, m in enumerate(model.config.models):
                if m in old:
                    rows[j] = ps[k][old.index(m)]
            out[k] = rows
        else:
            out[k] = ps[k].detach().clone()
    return out


def limit_traffic_shift(model: RouterModel, parent: RouterModel, tokenizer, pool: ModelPool,
                        requests: list[dict[str, Any]], models: list[str], prefs: Preferences | None,
                        max_shift: float, cfg: TrainConfig, cache: ActivationCache) -> dict[str, Any]:
    """Scale the update in place, to ``parent + t * (model - parent)`` (``parent``: the router the
    update started from) with the largest ``t`` such that on ``requests`` (dicts with prompt,
    preferences, context: the logged traffic) at most ``max_shift`` of the traffic moves to another
    model (:func:`share_shift`). It keeps one update from sending most requests to one model on the
    strength of a few explored outcomes; a capped move still brings in the next round's outcomes of
    that model, so a right move can complete over the following updates. Returns what it did."""
    prompts = [r["prompt"] for r in requests]
    weights = pref_weights(prefs, [r["preferences"] for r in requests])
    contexts = [r.get("context") or {} for r in requests]
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = parent_state_like(parent, model)

    def load(t: float) -> None:
        model.load_state_dict({k: start[k] + t * (v - start[k]) if v.is_floating_point() else v
                               for k, v in full.items()})

    def decisions(t: float) -> np.ndarray:
        load(t)
        return policy_probs(predict_router(model, tokenizer, pool, prompts, cfg, cache), models, pool,
                            weights, contexts)

    before = decisions(0.0)
    t, shift, full_shift = largest_scale(lambda t: share_shift(before, decisions(t)), max_shift)
    load(t)
    if t < 1.0:
        log.info("trust region: the update would move %.0f%% of the logged traffic to other models; "
                 "scaled to %.3f of it (%.0f%%, max_shift %.2f)", 100 * full_shift, t, 100 * shift, max_shift)
    return {"max_shift": max_shift, "n_requests": len(prompts), "shift_unscaled": full_shift,
            "scale": t, "shift": shift}
