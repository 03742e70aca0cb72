"""`neural-router update`: learn from logged outcomes, then decide whether the new router may replace
the current one (safe promotion).

Only the outcome of the model the router chose is observed (bandit feedback). Retraining naively on
such logs teaches the router mostly about the models it already preferred; with exploration and
logged propensities the bias can be corrected. The update:

1. reads the logged outcomes from a :class:`~neural_router.feedback.FeedbackStore`
   (``export_long``: one row per outcome, the chosen one with its propensity), one dataset row per
   request: the observed cells are filled, every other cell is NaN (masked out of every loss);
2. holds out a deterministic part of the logs (by prompt hash) for the promotion check;
3. mixes the rest with a sample of the router's original training data (named in its
   ``training_metrics.json``, or ``data``) so that it does not forget;
4. learns from them with per-cell weights ``min(1/propensity, clip)`` on the chosen outcomes (1 on
   other logged outcomes and on the original data; self-normalised by default). Models in
   ``pool_file`` that the router does not know are added, starting from a cold-start prior. By
   default (``head_refit``) only the quality head is refitted, by weighted logistic regression on
   the current router's frozen trunk features, penalised toward the current head: convex and
   deterministic, so the router changes only as much as the data says (in the replay simulation
   this beat fine-tuning, benchmarks/FEEDBACK.md). With ``head_refit=None`` it fine-tunes from the
   current router instead and keeps half of what the fine-tuning changed (``interpolate``, WiSE-FT
   style; a model's head rows keep more where the current router had seen few of its outcomes).
   Optionally (``max_shift``) the update is scaled back further until it moves at most that share
   of the logged traffic to other models;
5. writes a new versioned folder ``<output_dir>/<root version>+<timestamp>`` (``parent_version`` in
   its ``training_metrics.json``);
6. estimates on the held-out logs, with IPS, SNIPS and doubly robust estimators (bootstrap CIs), the
   value of the current and of the new router's greedy policy at the given preferences, and writes
   ``promotion.json`` (:mod:`training.promotion`): ``promote`` is true only when the new router is better by more than
   ``min_improvement`` under every estimator in ``promote_on`` (default: the direct method). The reward
   model of DR and of the direct method (DM) is the mean of the two routers' predictions, so that
   neither is judged by its own, calibrated per model on the logs the update trained on
   (``reward_calibration``).

The reward of a logged request is its utility, ``qw*score - cw*cost/max_cost - lw*latency/max_latency``
with the maxima taken from the predictions logged with the decision (fixed per request, so both
routers are scored on the same scale). With a greedy logging policy (propensity 1) IPS gives no
credit to choices the logger never made, so a changed router is rarely promoted: exploration is what
makes the check informative.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from neural_router import update_defaults as D
from neural_router.card import write_model_card
from neural_router.data.dataset import (RoutingDataset, load_recorded_data, load_routing_data, prompt_hash_unit,
                                recorded_sources)
from neural_router.feedback.store import FeedbackStore, safe_url
from neural_router.modeling.model import HEADS, RouterModel
from neural_router.policy.routing import Preferences
from neural_router.pool import ModelPool
from neural_router.inference.predictors import RouterLoadError, load_tokenizer, require_trained_folder
from neural_router.training.trainer import ActivationCache, TrainConfig, train_router
from neural_router.training.promotion import (PREF_KEYS, check_on_logs, logged_request, parse_promote_on, policy_probs,
                                predict_router, pref_weights, promotion_verdict)

log = logging.getLogger(__name__)

HOLDOUT_SALT = "offpolicy-holdout"
LOG_VAL_SALT = "update-validation"


# --------------------------------------------------------------------------------------------------
# datasets


def align_models(ds: RoutingDataset, models: list[str]) -> RoutingDataset:
    """The same prompts with columns ``models`` (NaN for a model ``ds`` has no column for)."""
    n = len(ds)
    arrays = []
    for name in ("scores", "cost_usd", "latency_ms", "output_tokens"):
        src = getattr(ds, name)
        out = np.full((n, len(models)), np.nan, dtype=np.float32)
        for j, m in enumerate(models):
            if m in ds.models:
                out[:, j] = src[:, ds.models.index(m)]
        arrays.append(out)
    return RoutingDataset(list(ds.prompts), list(models), *arrays, sources=list(ds.sources),
                          ids=list(ds.ids))


def concat(parts: list[RoutingDataset]) -> RoutingDataset:
    parts = [p for p in parts if len(p)]
    if not parts:
        raise ValueError("nothing to concatenate")
    models = parts[0].models
    assert all(p.models == models for p in parts)
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return RoutingDataset([x for p in parts for x in p.prompts], list(models), cat("scores"),
                          cat("cost_usd"), cat("latency_ms"), cat("output_tokens"),
                          [x for p in parts for x in p.sources], [x for p in parts for x in p.ids])


def logged_dataset(rows: list[dict[str, Any]], models: list[str], pool: ModelPool, clip: float | None,
                   importance_weighting: bool = True, normalize: bool = False
                   ) -> tuple[RoutingDataset, np.ndarray, dict[str, int]]:
    """``export_long`` rows -> (one dataset row per request, per-cell weights [N, M], counts).

    Chosen outcomes weigh ``min(1/propensity, clip)`` (1 without ``importance_weighting``); with
    ``normalize`` these weights are divided by their mean (self-normalised: the logs keep the total
    weight naive retraining gives them, importance weighting only redistributes it). Outcomes of
    other models of the same request (e.g. shadow evaluations) weigh 1.
    """
    col = {m: j for j, m in enumerate(models)}
    by_id: dict[str, int] = {}
    prompts, ids, sources, cells = [], [], [], []
    skipped = {"unknown model": 0, "bad score": 0}
    for r in rows:
        name = pool.resolve(str(r.get("model"))) if r.get("model") else None
        if name is None or name not in col:
            skipped["unknown model"] += 1
            continue
        score = r.get("score")
        if score is None or not np.isfinite(score) or not 0.0 <= float(score) <= 1.0:
            skipped["bad score"] += 1
            continue
        rid = str(r["id"])
        if rid not in by_id:
            by_id[rid] = len(prompts)
            prompts.append(r["prompt"])
            ids.append(rid)
            sources.append(str(r.get("source") or "feedback"))
            cells.append([])
        cells[by_id[rid]].append((col[name], r))
    n, m = len(prompts), len(models)
    arr = {k: np.full((n, m), np.nan, dtype=np.float32) for k in ("scores", "cost", "lat", "out")}
    weights = np.zeros((n, m), dtype=np.float32)
    chosen_mask = np.zeros((n, m), dtype=bool)
    for i, cs in enumerate(cells):
        for j, r in cs:
            arr["scores"][i, j] = float(r["score"])
            for key, field in (("cost", "cost_usd"), ("lat", "latency_ms"), ("out", "output_tokens")):
                v = r.get(field)
                if v is not None and np.isfinite(v) and v >= 0:
                    arr[key][i, j] = float(v)
            p = r.get("propensity")
            if r.get("chosen") and p is not None and importance_weighting:
                w = 1.0 / max(float(p), 1e-12)
                weights[i, j] = min(w, clip) if clip is not None else w
                chosen_mask[i, j] = True
            else:
                weights[i, j] = 1.0
    if normalize and chosen_mask.any():
        weights[chosen_mask] /= weights[chosen_mask].mean()
    if any(skipped.values()):
        log.warning("logged outcomes skipped: %s", skipped)
    ds = RoutingDataset(prompts, list(models), arr["scores"], arr["cost"], arr["lat"], arr["out"],
                        sources, ids)
    return ds, weights, skipped


def is_holdout(prompt: str, fraction: float) -> bool:
    return prompt_hash_unit(prompt, HOLDOUT_SALT) < fraction


def row_shares(models: list[str], n_now, seen_before: dict[str, int], interpolate: float) -> np.ndarray:
    """Per model, the share of the update its head rows keep: at least ``interpolate``, and at least
    the share of this update's observations of that model that the parent had not seen (a model the
    parent never saw outcomes of, like a new pool member, keeps all of its update; a parent trained
    before these counts were recorded falls back to ``interpolate``)."""
    return np.array([max(interpolate, 1.0 - min(seen_before.get(m, 0), n) / n) if n and seen_before
                     else interpolate for m, n in zip(models, n_now)], dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# trust region: how far one update may move the traffic


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
    """Trust region on the policy: scale the update in place, to ``parent + t * (model - parent)``
    (``parent``: the router the update fine-tuned from) with the largest ``t`` such that on
    ``requests`` (dicts with prompt, preferences, context: the logged traffic) at most ``max_shift``
    of the traffic moves to another model (:func:`share_shift`). One update that sends most requests
    to one model on the strength of a few explored outcomes is what made the small-slice replay's
    mean curve fall on fresh seeds; a capped move still brings in the next round's outcomes of that
    model, so a right move can complete over the following updates. In that replay (README, "A trust
    region on the policy") S = 0.2 removed the large falls but slowed the seeds that start far off,
    and ended level with no trust region; hence off by default. Returns what it did."""
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


# --------------------------------------------------------------------------------------------------
# configuration helpers


def _train_config(config, tm: dict, overrides: dict | None) -> TrainConfig:
    from neural_router.training.train import load_train_config

    over = {k: v for k, v in (overrides or {}).items() if v is not None}
    if isinstance(config, TrainConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = TrainConfig.model_validate(config)
    elif config is not None:
        return load_train_config(config, over)
    elif tm.get("config"):
        cfg = TrainConfig.model_validate(tm["config"])
    else:
        return load_train_config(None, over)
    return TrainConfig.model_validate({**cfg.model_dump(), **over}) if over else cfg


def _preferences(preferences) -> Preferences | None:
    if preferences is None or isinstance(preferences, Preferences):
        return preferences
    if isinstance(preferences, dict):
        return Preferences(**preferences)
    raise TypeError(f"preferences must be a Preferences, a dict or None, not {type(preferences).__name__}")


def _merged_pool(router_pool: ModelPool, pool_file: str | Path | None, known: list[str]
                 ) -> tuple[ModelPool, list[str]]:
    """(pool covering the router's models + new members of ``pool_file``, names of the new ones)."""
    if pool_file is None:
        return router_pool.subset(known), []
    given = ModelPool.from_yaml(pool_file)
    specs = [given.get(m) if given.resolve(m) == m else router_pool.get(m) for m in known]
    new = [s for s in given.models if s.name not in known]
    return ModelPool(models=tuple(specs + new)), [s.name for s in new]


def _version_dir(output_dir: Path, parent_version: str) -> tuple[str, Path]:
    root = parent_version.split("+", 1)[0] or "0"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    version, k = f"{root}+{stamp}", 1
    while (output_dir / version).exists():
        k += 1
        version = f"{root}+{stamp}-{k}"
    return version, output_dir / version


# --------------------------------------------------------------------------------------------------
# the update


def _load_router_folder(d: Path, what: str) -> tuple[RouterModel, Any, dict]:
    """A trained (PyTorch) router folder: its model, tokenizer and training metrics ({} if none)."""
    try:
        require_trained_folder(d)
    except RouterLoadError as e:
        raise RouterLoadError(f"{what}: {e}") from None
    tm_path = d / "training_metrics.json"
    return (RouterModel.from_pretrained(d), load_tokenizer(d),
            json.loads(tm_path.read_text()) if tm_path.is_file() else {})


def run_update(router_dir: str | Path, feedback_url: str | Path | FeedbackStore, output_dir: str | Path,
               data: list[str] | None = None, config: str | Path | TrainConfig | dict | None = None,
               preferences: Preferences | dict | None = None, min_improvement: float = 0.0,
               clip: float | None = 10.0, *, require_ci: bool = False,
               promote_on: str | tuple[str, ...] = ("dm",),
               pool_file: str | Path | None = None,
               holdout_fraction: float = 0.3, original_sample: int | None = 2000,
               router_version: str | None = None, cold_start_prior: float | None = None,
               importance_weighting: bool = True, normalize_weights: bool = True,
               log_val_fraction: float = D.LOG_VAL_FRACTION, interpolate: float | None = None,
               compare_with: str | Path | None = None, bias_calibration: float | None = None,
               head_transfer: float | None = D.HEAD_TRANSFER, head_transfer_models: tuple[str, ...] | None = None,
               max_shift: float | None = None, reward_calibration: float | None = D.REWARD_CALIBRATION,
               overrides: dict | None = None, head_refit: float | None = D.HEAD_REFIT,
               n_boot: int = 1000, alpha: float = 0.05, seed: int = 0,
               activation_cache: ActivationCache | None = None, progress: bool = False) -> dict[str, Any]:
    """Fine-tune ``router_dir`` on the logged outcomes in ``feedback_url`` and judge the result.

    Args:
        router_dir: the current router (a trained folder, with ``model.safetensors``).
        feedback_url: SQLAlchemy URL or SQLite path of the feedback store (or an open store).
        output_dir: parent folder; the new router goes to ``output_dir/<version>``.
        data: original training data to mix in (default: the ``data`` of the router's
            ``training_metrics.json``; none found -> logs only, with a warning).
        config: training config (YAML path, TrainConfig or dict; default: the router's own).
        preferences: preferences at which the two routers are compared (Preferences or a dict of
            quality_weight/cost_weight/latency_weight); None = each request's logged preferences.
        min_improvement: the new router must beat the current one by more than this, in policy
            value (utility per request), under every estimator of ``promote_on`` to be promoted.
        clip: clip of the inverse-propensity training weights (None: no clipping).
        require_ci: stricter promotion: the lower ends of the (1 - alpha) bootstrap intervals of
            those differences must exceed ``min_improvement``.
        promote_on: the estimators that must all say "better" (``ips``, ``snips``, ``dr``, ``dm``).
            Default: the direct method (DM: the calibrated reward model alone) since 2026-12-02.
            Re-judging 100 candidates of gated replays (benchmarks/gate_rejudge.py,
            benchmarks/FEEDBACK.md) DR's verdict was anti-correlated with the candidates' true gain
            (a few exploration outcomes weighted 1/p ~ 55 decide it, and rows logged before a new
            member joined cannot credit it) and missed 61 of 87 real improvements; the calibrated
            DM missed 27 for as many false promotions (6). IPS and DR are still computed and
            written to ``promotion.json``; ``"dm,dr"`` requires both.
        pool_file: pool YAML; its models the router does not know are added (cold-start prior).
        holdout_fraction: share of logged prompts (by prompt hash) kept out of training for the
            promotion check.
        original_sample: at most this many original training prompts are mixed in (None: all).
        router_version: only use decisions logged by this router version.
        cold_start_prior: prior quality of new models (default: mean quality of the known ones).
        importance_weighting: False = naive retraining (weight 1 on every logged outcome).
        normalize_weights: divide the clipped 1/propensity weights by their mean (default), so the
            logs weigh as much in total as in naive retraining; False = the raw clipped weights. In
            the replay simulation (benchmarks/bench_feedback.py, benchmarks/FEEDBACK.md)
            self-normalised weights beat raw clip-10 weights both in the warm start (0.772 vs 0.762
            utility) and when a new model joins the pool (0.762 vs 0.737).
        log_val_fraction: share of the (non-held-out) logged prompts used, with their weights,
            for early stopping, next to the original validation split.
        interpolate: keep only this share of the update's change: the new weights are
            ``interpolate * updated + (1 - interpolate) * current`` (WiSE-FT style; 1 = the
            updated weights). A model's head rows keep more where the current router had little
            evidence for that model (:func:`row_shares`: a new pool member keeps all of its first
            update). Default (None): 1 with ``head_refit`` (its penalty already limits the step),
            0.5 when fine-tuning: in the replay simulation (benchmarks/FEEDBACK.md) fine-tuning's
            mean curve then rose every round and ended higher than with 1.
        compare_with: the router that serves now, which the new one must beat on the held-out logs
            (default: ``router_dir``). Set it to fine-tune further from a candidate that was not
            promoted (its lineage keeps learning) while the check still compares with what serves.
        bias_calibration: after fine-tuning, shift each model's quality bias toward its (weighted)
            mean observed score on the training cells, shrunk by this many pseudo-observations
            (``train_router(bias_calibration=)``; None = off, the default).
        head_transfer: after fine-tuning, rewrite the quality head row of each model in
            ``head_transfer_models`` as a mixture of the other models' rows plus a bias, fitted to its
            (weighted) training outcomes with a prior at the plain average as strong as this many
            outcomes (``train_router(head_transfer=)``, :func:`neural_router.trainer.fit_head_mixture`;
            default 20; None or 0 = off). Meant for new pool members: a model with a few dozen
            outcomes learns which known models it behaves like, and how much better or worse, instead
            of a whole head row. In the replay simulation (benchmarks/FEEDBACK.md, "Head transfer
            for a new pool member") it learned the new model two rounds sooner, and it changes
            nothing when no model is new.
        head_transfer_models: the models to rewrite. None = the models this update adds to the pool
            plus those the parent's update rewrote (so a new member keeps the transfer over its
            first updates until it is switched off or the list is given).
        max_shift: trust region on the policy: scale the update down (toward ``router_dir``'s weights)
            until at most this share of the logged traffic moves to another model
            (:func:`limit_traffic_shift`; None = off, the default).
        reward_calibration: calibrate the promotion check's reward model on the logs the update
            trained on: each model's predicted quality is shifted by its mean residual there, shrunk
            by this many pseudo-requests toward the mean residual (:func:`reward_model_shift`; None =
            off). Default 10.
        overrides: TrainConfig fields to override (e.g. ``{"epochs": 3}``).
        head_refit: refit only the quality head on the parent's frozen trunk, penalised toward the
            parent's head with this strength (``train_router(head_refit=)``,
            :func:`neural_router.trainer.refit_quality_head`; default 30; None = fine-tune the
            trunk and heads, the default until 2026-12-02). Convex and deterministic, a few seconds
            on CPU. In the small-slice replay (benchmarks/FEEDBACK.md, "Refitting only the quality
            head") it closed 75 % of the gap to the full-information router on 40 seeds where
            fine-tuning closed 59 %; at the replay's default sizes (300 outcomes per update) it
            closed 67 % where fine-tuning closed 83 % (10 seeds), so fine-tuning may pay once an
            update has a few hundred outcomes.
        n_boot, alpha, seed: bootstrap replicates, CI level (1 - alpha), seed.
        activation_cache: share frozen-layer activations with other updates in this process.

    Returns a dict: ``router_dir``, ``version``, ``parent_version``, ``promote`` (bool),
    ``promotion`` (what ``promotion.json`` holds), ``n_logged``, ``n_logged_train``, ``n_logged_val``,
    ``n_holdout``, ``n_original``, ``new_models``, ``history``, ``trust_region`` (None when off).
    """
    t0 = time.time()
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    if not 0.0 <= log_val_fraction < 1.0:
        raise ValueError(f"log_val_fraction must be in [0, 1) (the share of logged prompts kept for early "
                         f"stopping), got {log_val_fraction}")
    if clip is not None and not clip >= 1.0:
        raise ValueError(f"clip must be >= 1 (or None), got {clip}")
    if interpolate is None:
        interpolate = 1.0 if head_refit is not None else 0.5
    if not 0.0 < interpolate <= 1.0:
        raise ValueError(f"interpolate must be in (0, 1] (the share of the update's change to keep), "
                         f"got {interpolate}")
    promote_on = parse_promote_on(promote_on)
    parent_dir = Path(router_dir)
    parent, tokenizer, tm = _load_router_folder(parent_dir, "router_dir")
    # the router the candidate must beat: the parent, or (compare_with) the one that serves now
    serving_dir = Path(compare_with) if compare_with is not None else parent_dir
    serving, serving_tok, serving_tm = ((parent, tokenizer, tm) if serving_dir == parent_dir
                                        else _load_router_folder(serving_dir, "compare_with"))
    cfg = _train_config(config, tm, overrides)
    prefs = _preferences(preferences)
    pool, new_models = _merged_pool(ModelPool.from_yaml(parent_dir / "models.yaml"), pool_file,
                                    list(parent.config.models))
    models = list(parent.config.models) + new_models
    head_transfer = head_transfer or None   # 0 = off, as on the command line
    if reward_calibration is not None and not (math.isfinite(reward_calibration) and reward_calibration >= 0):
        raise ValueError(f"reward_calibration must be a finite pseudo count >= 0 (None = off), "
                         f"got {reward_calibration}")
    if max_shift is not None and not 0.0 < max_shift <= 1.0:
        raise ValueError(f"max_shift must be in (0, 1] (the share of logged traffic one update may move "
                         f"to another model), got {max_shift}")
    if head_transfer is not None and not (math.isfinite(head_transfer) and head_transfer > 0):
        raise ValueError(f"head_transfer must be a finite pseudo count > 0 (0 = off), got {head_transfer}")
    if head_refit is not None and not (math.isfinite(head_refit) and head_refit > 0):
        raise ValueError(f"head_refit must be a finite penalty > 0 (None = fine-tune as usual), got {head_refit}")
    if head_transfer is None and head_transfer_models:
        raise ValueError("head_transfer_models names models to rewrite, but head_transfer (the prior's "
                         "strength, e.g. 20) is not set; set it or drop the list")
    if head_transfer is not None:
        unknown = [m for m in (head_transfer_models or ()) if m not in models]
        if unknown:
            raise ValueError(f"head_transfer_models: {', '.join(map(repr, unknown))} not in the router's pool "
                             f"({', '.join(models)}); add them to the pool file (--pool) or fix the names")
    cache = activation_cache if activation_cache is not None else ActivationCache()

    # ---- logged outcomes -------------------------------------------------------------------------
    own_store = not isinstance(feedback_url, FeedbackStore)
    store = FeedbackStore.from_url(feedback_url, must_exist=True) if own_store else feedback_url
    try:
        rows = store.export_long(router_version=router_version)
        # every logged request with its chosen outcome, as the trust region and the promotion check read it
        requests = [logged_request(d, o, pool)
                    for d, o in store.iter_logged(chosen_only=True, router_version=router_version)
                    if d.prompt is not None]
    finally:
        if own_store:
            store.close()
    if not rows:
        raise ValueError(f"the feedback store {safe_url(feedback_url)} has no logged outcomes with a "
                         "prompt" + (f" for router version {router_version!r}" if router_version else ""))
    logs, weights, skipped = logged_dataset(rows, models, pool, clip, importance_weighting, normalize_weights)
    hold = np.array([is_holdout(p, holdout_fraction) for p in logs.prompts], dtype=bool)
    lval = np.array([prompt_hash_unit(p, LOG_VAL_SALT) < log_val_fraction for p in logs.prompts]) & ~hold
    logs_train, w_train = logs.subset(~hold & ~lval), weights[~hold & ~lval]
    logs_val, w_val = logs.subset(lval), weights[lval]
    if not len(logs_train):
        raise ValueError(f"all {len(logs)} logged requests fell into the held-out part "
                         f"(holdout_fraction={holdout_fraction}); log more traffic or lower it")

    # ---- original data ---------------------------------------------------------------------------
    if isinstance(data, (str, Path)):
        data = [str(data)]
    data_paths = recorded_sources([str(d) for d in data] if data else list(tm.get("data") or []))
    val_fraction = tm.get("val_fraction", cfg.data.val_fraction)
    split_salt = tm.get("split_salt", cfg.data.split_salt)
    orig_train = orig_val = None
    if data_paths:
        dcfg = cfg.data.model_copy(update={"unknown_models": "skip"})
        ds = (load_routing_data(data_paths, pool, dcfg) if data
              else load_recorded_data(data_paths, f"{parent_dir}/training_metrics.json", pool, dcfg))
        ds = align_models(ds, models)
        orig_train, orig_val = ds.split(val_fraction, split_salt)
        if original_sample is not None and len(orig_train) > original_sample:
            idx = np.sort(np.random.default_rng(seed).choice(len(orig_train), original_sample, replace=False))
            orig_train = orig_train.subset(idx)
    else:
        log.warning("no original training data (pass data=...): updating on logged outcomes only, "
                    "which risks forgetting what the router knew")
    parts = [orig_train, logs_train] if orig_train is not None and len(orig_train) else [logs_train]
    train = concat(parts)
    sw = np.concatenate([np.ones_like(orig_train.scores, dtype=np.float32), w_train]) \
        if len(parts) == 2 else w_train
    vparts = [(orig_val, np.ones_like(orig_val.scores)) if orig_val is not None else None, (logs_val, w_val)]
    vparts = [v for v in vparts if v is not None and len(v[0])]
    val = concat([v[0] for v in vparts]) if vparts else None
    val_w = np.concatenate([v[1] for v in vparts]).astype(np.float32) if vparts else None
    log.info("update: %d logged requests (%d for training, %d held out), %d original prompts, "
             "new models: %s", len(logs), len(logs_train), int(hold.sum()),
             len(orig_train) if orig_train is not None else 0, new_models or "none")

    if head_transfer is None:
        head_transfer_models = ()
    elif head_transfer_models is None:   # the new models, and those the parent's update rewrote
        inherited = (tm.get("update") or {}).get("head_transfer_models") or []
        head_transfer_models = tuple(dict.fromkeys([*new_models, *inherited]))
    row_a = row_shares(train.models, train.mask.sum(0),
                       (tm.get("summary") or {}).get("observed_per_model") or {}, interpolate)
    model, tok, history = train_router(train, val, pool, cfg, progress=progress, init_from=parent,
                                       sample_weights=sw, cold_start_prior=cold_start_prior,
                                       activation_cache=cache, val_sample_weights=val_w,
                                       interpolate=interpolate,
                                       row_interpolate=row_a if interpolate < 1.0 else None,
                                       bias_calibration=bias_calibration, head_transfer=head_transfer,
                                       head_transfer_models=head_transfer_models, head_refit=head_refit)
    trust_region = None
    if max_shift is not None:
        trust_region = limit_traffic_shift(model, parent, tok, pool, requests, models, prefs, max_shift,
                                           cfg, cache)

    # ---- save --------------------------------------------------------------------------------------
    out_root = Path(output_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    version, out = _version_dir(out_root, parent.config.version)
    model.config.version = version
    model.save_pretrained(out)
    tok.save_pretrained(str(out))
    pool.subset(model.config.models).to_yaml(out / "models.yaml")
    update_info = {
        "feedback": safe_url(feedback_url) if own_store else "<FeedbackStore>",
        "router_version_filter": router_version, "logged_requests": len(logs),
        "logged_train": len(logs_train), "logged_val": len(logs_val), "logged_holdout": int(hold.sum()),
        "holdout_fraction": holdout_fraction, "holdout_salt": HOLDOUT_SALT,
        "original_prompts": len(orig_train) if orig_train is not None else 0,
        "importance_weighting": importance_weighting, "normalize_weights": normalize_weights, "clip": clip,
        "weights_of_chosen": {"mean": float(w_train[w_train > 0].mean()) if (w_train > 0).any() else None,
                              "max": float(w_train.max()) if w_train.size else None},
        "new_models": new_models, "cold_start_prior": cold_start_prior, "interpolate": interpolate,
        "bias_calibration": bias_calibration, "head_transfer": head_transfer,
        "head_transfer_models": list(head_transfer_models), "head_refit": head_refit,
        "trust_region": trust_region,
        "row_interpolate": dict(zip(train.models, row_a.round(3).tolist())), "skipped": skipped}
    metrics = {"data": data_paths, "summary": train.summary(),
               "train_prompts": len(train), "val_prompts": len(val) if val is not None else 0,
               "val_fraction": val_fraction, "split_salt": split_salt, "history": history,
               "train_minutes": (time.time() - t0) / 60, "config": cfg.model_dump(mode="json"),
               "parent_version": parent.config.version, "parent_dir": str(parent_dir),
               "lineage": list(tm.get("lineage", [])) + [parent.config.version], "update": update_info}
    (out / "training_metrics.json").write_text(json.dumps(metrics, indent=2, default=float))

    # ---- safe promotion ----------------------------------------------------------------------------
    hold_prompts = set(np.asarray(logs.prompts, dtype=object)[hold].tolist())
    logged = [r for r in requests if r["prompt"] in hold_prompts]
    promotion: dict[str, Any] = {"current_version": serving.config.version, "trained_from": parent.config.version,
                                 "new_version": version,
                                 "preferences": asdict(prefs) if prefs is not None else "logged per request",
                                 "min_improvement": min_improvement, "require_ci": require_ci,
                                 "promote_on": list(promote_on),
                                 "alpha": alpha, "n": len(logged)}
    if logged:
        serving_cfg = cfg if serving is parent else _train_config(None, serving_tm, None)
        fit = [r for r in requests if r["prompt"] not in hold_prompts]
        res = check_on_logs((serving, serving_tok, serving_cfg), (model, tok, cfg), pool, models, logged,
                            fit, prefs, reward_calibration, n_boot, alpha, seed, cache)
        promotion.update(res)
        promotion["promote"], promotion["reason"] = promotion_verdict(res, min_improvement, require_ci,
                                                                          promote_on)
    else:
        promotion.update({"promote": False, "reason": "no held-out logged requests to evaluate on"})
    (out / "promotion.json").write_text(json.dumps(promotion, indent=2, default=float))
    write_model_card(out)   # with the promotion verdict
    log.info("update: new router %s in %s; promote=%s (%s)", version, out, promotion["promote"],
             promotion["reason"])
    return {"router_dir": str(out), "version": version, "parent_version": parent.config.version,
            "promote": promotion["promote"], "promotion": promotion, "n_logged": len(logs),
            "n_logged_train": len(logs_train), "n_logged_val": len(logs_val), "n_holdout": int(hold.sum()),
            "n_original": len(orig_train) if orig_train is not None else 0,
            "new_models": new_models, "history": history, "trust_region": trust_region,
            "minutes": (time.time() - t0) / 60}


# --------------------------------------------------------------------------------------------------
# command line: ``python -m neural_router.training.update`` and ``neural-router update`` share their options
# (``neural_router.cli.add_update_arguments``, kept there so the CLI starts without importing torch)


def run_from_args(args) -> dict[str, Any]:
    """Run an update from parsed ``add_update_arguments`` options; preferences given on the command line
    are fixed (unset weights take the defaults), none given = each request's logged preferences."""
    weights = {k: getattr(args, k) for k in PREF_KEYS if getattr(args, k, None) is not None}
    return run_update(args.router, args.feedback, args.output, data=args.data, config=args.config,
                      preferences=weights or None, min_improvement=args.min_improvement,
                      require_ci=args.require_ci, promote_on=args.promote_on,
                      clip=args.clip, pool_file=args.pool, holdout_fraction=args.holdout_fraction,
                      router_version=args.router_version, cold_start_prior=args.cold_start_prior,
                      importance_weighting=not args.naive, normalize_weights=not args.raw_weights,
                      interpolate=args.interpolate, compare_with=args.compare_with,
                      bias_calibration=args.bias_calibration, head_transfer=args.head_transfer,
                      head_transfer_models=tuple(args.head_transfer_models) if args.head_transfer_models else None,
                      max_shift=args.max_shift,
                      reward_calibration=args.reward_calibration, head_refit=args.head_refit,
                      log_val_fraction=args.log_val_fraction,
                      overrides={"epochs": args.epochs, "soup": args.soup})


def main(argv: list[str] | None = None) -> int:
    import argparse

    from neural_router.cli import add_update_arguments

    ap = argparse.ArgumentParser(prog="python -m neural_router.training.update", description=__doc__.split("\n\n")[0])
    add_update_arguments(ap)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = run_from_args(args)
    print(json.dumps({k: res[k] for k in ("router_dir", "version", "parent_version", "promote")}, indent=2))
    print(res["promotion"]["reason"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
