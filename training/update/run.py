"""`neural-router update`: learn from logged outcomes, then decide whether the new router may replace
the current one (safe promotion).

Only the outcome of the model the router chose is observed (bandit feedback). Retraining naively on
such logs teaches the router mostly about the models it already preferred; with exploration and
logged propensities the bias can be corrected. :func:`run_update`:

1. loads the current router (and, with ``compare_with``, the one serving now);
2. reads the logged outcomes from a :class:`~neural_router.feedback.store.FeedbackStore`, one dataset
   row per request (unobserved cells are NaN, masked out of every loss), weighted
   ``min(1/propensity, clip)`` on the chosen outcomes (self-normalised by default), and splits them by
   prompt hash into training, early-stopping and held-out parts;
3. mixes the training part with a sample of the router's original training data, so that it does not
   forget;
4. trains the update (:func:`~neural_router.training.update.finetune.update_router`): by default
   only the quality head is refitted on the router's frozen trunk (``head_refit``), otherwise it
   fine-tunes and keeps a share of the change (``interpolate``); models of ``pool_file`` the router
   does not know are added from a cold-start prior, and optionally (``max_shift``) the update is
   scaled back until it moves at most that share of the logged traffic to other models;
5. judges it on the held-out logs (:mod:`~neural_router.training.update.promotion`): ``promote`` is
   true only when the new router is better by more than ``min_improvement`` under every estimator of
   ``promote_on``;
6. writes the new versioned folder ``<output_dir>/<root version>+<timestamp>`` with
   ``promotion.json`` (``parent_version`` in its ``training_metrics.json``).

With a greedy logging policy (propensity 1) IPS gives no credit to choices the logger never made, so
a changed router is rarely promoted: exploration is what makes the check informative. The settings
and their defaults: :class:`~neural_router.training.config.UpdateConfig`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from neural_router.feedback.store import FeedbackStore, safe_url
from neural_router.inference.predictors import RouterLoadError, load_tokenizer, require_trained_folder
from neural_router.modeling.model import RouterModel
from neural_router.pool import ModelPool
from neural_router.training.activation_cache import ActivationCache
from neural_router.training.config import PREF_KEYS, TrainConfig, UpdateConfig, load_train_config
from neural_router.training.folder import save_router_folder
from neural_router.training.update.datasets import (HOLDOUT_SALT, LoggedSplit, OriginalData, original_data,
                                                    read_logs, row_shares, split_logs, training_sets)
from neural_router.training.update.finetune import UpdateSteps, update_router
from neural_router.training.update.promotion import check_on_logs, promotion_verdict
from neural_router.training.update.trust_region import limit_traffic_shift

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A trained router folder in memory."""

    dir: Path
    model: RouterModel
    tokenizer: Any
    metrics: dict   # its training_metrics.json ({} if none)


def load_router_folder(d: str | Path, what: str) -> Loaded:
    """A trained (PyTorch) router folder; :class:`RouterLoadError` naming ``what`` when it is not one."""
    d = Path(d)
    try:
        require_trained_folder(d)
    except RouterLoadError as e:
        raise RouterLoadError(f"{what}: {e}") from None
    tm_path = d / "training_metrics.json"
    return Loaded(d, RouterModel.from_pretrained(d), load_tokenizer(d),
                  json.loads(tm_path.read_text()) if tm_path.is_file() else {})


def update_settings(settings: UpdateConfig | None, options: dict[str, Any]) -> tuple[UpdateConfig, Any]:
    """(the update's settings, an in-memory training config or None) from ``settings`` and keyword
    ``options`` (UpdateConfig fields; ``preferences`` as a Preferences or dict; ``config`` as a
    YAML path, TrainConfig or dict). ValueError naming each bad setting."""
    from neural_router.validation import describe

    options = dict(options)
    train_cfg = options.pop("config", None) if isinstance(options.get("config"), (TrainConfig, dict)) else None
    prefs = options.pop("preferences", None)
    if prefs is not None and not isinstance(prefs, dict):
        if not all(hasattr(prefs, k) for k in PREF_KEYS):
            raise TypeError(f"preferences must be a Preferences, a dict or None, not {type(prefs).__name__}")
        prefs = asdict(prefs)
    raw = {**(settings.model_dump() if settings is not None else {}), **(prefs or {}), **options}
    try:
        return UpdateConfig.model_validate(raw), train_cfg
    except ValidationError as e:
        raise ValueError(f"invalid update settings:\n{describe(e, raw)}") from None


def train_config(config, tm: dict, overrides: dict | None) -> TrainConfig:
    """The update's training config: ``config`` (a YAML path, TrainConfig or dict) or the router's own
    (its ``training_metrics.json``, ``tm``), with the non-None ``overrides``."""
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


def merged_pool(router_pool: ModelPool, pool_file: str | Path | None, known: list[str]
                ) -> tuple[ModelPool, list[str]]:
    """(pool covering the router's models + new members of ``pool_file``, names of the new ones)."""
    if pool_file is None:
        return router_pool.subset(known), []
    given = ModelPool.from_yaml(pool_file)
    specs = [given.get(m) if given.resolve(m) == m else router_pool.get(m) for m in known]
    new = [s for s in given.models if s.name not in known]
    return ModelPool(models=tuple(specs + new)), [s.name for s in new]


def version_dir(output_dir: Path, parent_version: str) -> tuple[str, Path]:
    """A new version ``<parent's root version>+<timestamp>`` and its (not yet existing) folder."""
    root = parent_version.split("+", 1)[0] or "0"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    version, k = f"{root}+{stamp}", 1
    while (output_dir / version).exists():
        k += 1
        version = f"{root}+{stamp}-{k}"
    return version, output_dir / version


def transfer_models(uc: UpdateConfig, models: list[str], new_models: list[str], tm: dict) -> tuple[str, ...]:
    """The models whose quality head the head transfer rewrites: ``uc.head_transfer_models``, or
    the models this update adds plus those the parent's update rewrote. ValueError for a list
    without a strength or a name outside the pool."""
    if uc.transfer_strength() is None:
        if uc.head_transfer_models:
            raise ValueError("head_transfer_models names models to rewrite, but head_transfer (the prior's "
                             "strength, e.g. 20) is not set; set it or drop the list")
        return ()
    if uc.head_transfer_models is None:
        inherited = (tm.get("update") or {}).get("head_transfer_models") or []
        return tuple(dict.fromkeys([*new_models, *inherited]))
    unknown = [m for m in uc.head_transfer_models if m not in models]
    if unknown:
        raise ValueError(f"head_transfer_models: {', '.join(map(repr, unknown))} not in the router's pool "
                         f"({', '.join(models)}); add them to the pool file (--pool) or fix the names")
    return tuple(uc.head_transfer_models)


def promotion_check(serving: Loaded, parent: Loaded, new: tuple, pool: ModelPool, models: list[str],
                    requests: list[dict[str, Any]], split: LoggedSplit, uc: UpdateConfig, version: str,
                    cache: ActivationCache) -> dict[str, Any]:
    """What ``promotion.json`` holds: the settings of the check, the off-policy comparison of the
    serving and the ``new`` router (model, tokenizer, TrainConfig) on the held-out logged requests
    (its reward model calibrated on the others) and the verdict."""
    prefs = uc.preferences()
    hold_prompts = set(np.asarray(split.logs.prompts, dtype=object)[split.hold].tolist())
    logged = [r for r in requests if r["prompt"] in hold_prompts]
    promotion: dict[str, Any] = {
        "current_version": serving.model.config.version, "trained_from": parent.model.config.version,
        "new_version": version, "preferences": asdict(prefs) if prefs is not None else "logged per request",
        "min_improvement": uc.min_improvement, "require_ci": uc.require_ci, "promote_on": list(uc.promote_on),
        "alpha": uc.alpha, "n": len(logged)}
    if not logged:
        return {**promotion, "promote": False, "reason": "no held-out logged requests to evaluate on"}
    serving_cfg = new[2] if serving is parent else train_config(None, serving.metrics, None)
    fit = [r for r in requests if r["prompt"] not in hold_prompts]
    res = check_on_logs((serving.model, serving.tokenizer, serving_cfg), new, pool, models, logged, fit, prefs,
                        uc.reward_calibration, uc.n_boot, uc.alpha, uc.seed, cache)
    promotion.update(res)
    promotion["promote"], promotion["reason"] = promotion_verdict(res, uc.min_improvement, uc.require_ci,
                                                                  uc.promote_on)
    return promotion


def update_info(uc: UpdateConfig, feedback, split: LoggedSplit, orig: OriginalData, steps: UpdateSteps,
                new_models: list[str], row_a: np.ndarray, models: list[str], trust_region) -> dict[str, Any]:
    """The ``update`` entry of the new router's ``training_metrics.json``: what the update was given
    and did."""
    w_train = split.weights[split.train]
    return {
        "feedback": "<FeedbackStore>" if isinstance(feedback, FeedbackStore) else safe_url(feedback),
        "router_version_filter": uc.router_version, "logged_requests": len(split.logs),
        "logged_train": int(split.train.sum()), "logged_val": int(split.val.sum()),
        "logged_holdout": int(split.hold.sum()), "holdout_fraction": uc.holdout_fraction,
        "holdout_salt": HOLDOUT_SALT, "original_prompts": len(orig.train) if orig.train is not None else 0,
        "importance_weighting": uc.importance_weighting, "normalize_weights": uc.normalize_weights,
        "clip": uc.clip,
        "weights_of_chosen": {"mean": float(w_train[w_train > 0].mean()) if (w_train > 0).any() else None,
                              "max": float(w_train.max()) if w_train.size else None},
        "new_models": new_models, "cold_start_prior": uc.cold_start_prior, "interpolate": steps.interpolate,
        "bias_calibration": uc.bias_calibration, "head_transfer": steps.head_transfer,
        "head_transfer_models": list(steps.head_transfer_models), "head_refit": uc.head_refit,
        "trust_region": trust_region, "row_interpolate": dict(zip(models, row_a.round(3).tolist())),
        "skipped": split.skipped}


def gather_data(feedback, parent: Loaded, pool: ModelPool, models: list[str], new_models: list[str],
                cfg: TrainConfig, uc: UpdateConfig) -> tuple[list[dict[str, Any]], LoggedSplit, OriginalData]:
    """(every logged request with its chosen outcome, the logged outcomes split for training, the
    original training data)."""
    rows, requests = read_logs(feedback, pool, uc.router_version)
    split = split_logs(rows, models, pool, uc)
    orig = original_data(parent.dir, parent.metrics, models, pool, cfg, uc)
    log.info("update: %d logged requests (%d for training, %d for early stopping, %d held out for the "
             "promotion check), %d original prompts, new models: %s", len(split.logs), int(split.train.sum()),
             int(split.val.sum()), int(split.hold.sum()), len(orig.train) if orig.train is not None else 0,
             new_models or "none")
    return requests, split, orig


def update_steps(uc: UpdateConfig, train, parent_metrics: dict, targets: tuple[str, ...]
                 ) -> tuple[UpdateSteps, np.ndarray]:
    """(what the update does to the parent, each model's share of the change): with interpolation, a
    model's head rows keep more where the parent saw few of its outcomes (:func:`row_shares`)."""
    interpolate = uc.interpolation()
    row_a = row_shares(train.models, train.mask.sum(0),
                       (parent_metrics.get("summary") or {}).get("observed_per_model") or {}, interpolate)
    return UpdateSteps(uc.cold_start_prior, uc.head_refit, interpolate, row_a if interpolate < 1.0 else None,
                       uc.bias_calibration, uc.transfer_strength(), targets), row_a


def run_update(router_dir: str | Path, feedback_url: str | Path | FeedbackStore, output_dir: str | Path,
               settings: UpdateConfig | None = None, *, overrides: dict | None = None,
               activation_cache: ActivationCache | None = None, progress: bool = False,
               **options) -> dict[str, Any]:
    """Update the router in ``router_dir`` from the logged outcomes in ``feedback_url`` (a SQLAlchemy
    URL, a SQLite path or an open store) and judge the result; the new router goes to
    ``output_dir/<version>``. ``settings`` and keyword ``options`` (its fields, which win; also
    ``preferences`` and an in-memory ``config``, see :func:`update_settings`) say how;
    ``overrides``: TrainConfig fields to override (e.g. ``{"epochs": 3}``); ``activation_cache``:
    share frozen-layer activations with other updates in this process.

    Returns a dict: ``router_dir``, ``version``, ``parent_version``, ``promote`` (bool),
    ``promotion`` (what ``promotion.json`` holds), ``n_logged``, ``n_logged_train``, ``n_logged_val``,
    ``n_holdout``, ``n_original``, ``new_models``, ``history``, ``trust_region`` (None when off),
    ``minutes``.
    """
    t0 = time.time()
    uc, in_memory_cfg = update_settings(settings, options)
    parent = load_router_folder(router_dir, "router_dir")
    serving = parent if uc.compare_with is None or Path(uc.compare_with) == parent.dir \
        else load_router_folder(uc.compare_with, "compare_with")
    cfg = train_config(in_memory_cfg if in_memory_cfg is not None else uc.config, parent.metrics,
                       {"epochs": uc.epochs, "soup": uc.soup, **(overrides or {})})
    pool, new_models = merged_pool(ModelPool.from_yaml(parent.dir / "models.yaml"), uc.pool_file,
                                   list(parent.model.config.models))
    models = [*parent.model.config.models, *new_models]
    targets = transfer_models(uc, models, new_models, parent.metrics)
    cache = activation_cache if activation_cache is not None else ActivationCache()

    requests, split, orig = gather_data(feedback_url, parent, pool, models, new_models, cfg, uc)
    train, sw, val, val_w = training_sets(orig, split)
    steps, row_a = update_steps(uc, train, parent.metrics, targets)
    model, tok, history = update_router(train, val, pool, cfg, parent.model, steps, sw, val_w, cache, progress)
    trust_region = (limit_traffic_shift(model, parent.model, tok, pool, requests, models, uc.preferences(),
                                        uc.max_shift, cfg, cache) if uc.max_shift is not None else None)

    out_root = Path(output_dir)
    out_root.mkdir(parents=True, exist_ok=True)
    version, out = version_dir(out_root, parent.model.config.version)
    model.config.version = version
    minutes = (time.time() - t0) / 60
    promotion = promotion_check(serving, parent, (model, tok, cfg), pool, models, requests, split, uc, version,
                                cache)
    metrics = {"data": orig.paths, "summary": train.summary(), "train_prompts": len(train),
               "val_prompts": len(val) if val is not None else 0, "val_fraction": orig.val_fraction,
               "split_salt": orig.split_salt, "history": history, "train_minutes": minutes,
               "config": cfg.model_dump(mode="json"), "parent_version": parent.model.config.version,
               "parent_dir": str(parent.dir), "lineage": [*parent.metrics.get("lineage", []), parent.model.config.version],
               "update": update_info(uc, feedback_url, split, orig, steps, new_models, row_a, train.models,
                                     trust_region)}
    save_router_folder(out, model, tok, pool, metrics, {"promotion.json": promotion})
    if uc.publish and promotion["promote"]:
        register_promotion(out, feedback_url)
    log.info("update: new router %s in %s; promote=%s (%s)", version, out, promotion["promote"], promotion["reason"])
    return {"router_dir": str(out), "version": version, "parent_version": parent.model.config.version,
            "promote": promotion["promote"], "promotion": promotion, "n_logged": len(split.logs),
            **counts(split, orig), "new_models": new_models, "history": history, "trust_region": trust_region,
            "minutes": (time.time() - t0) / 60}


def register_promotion(folder: Path, feedback_url: str | Path | FeedbackStore) -> None:
    """Record a promoted ``folder`` in the router registry of the store the update read, with its
    promotion.json as evidence (:func:`~neural_router.feedback.registry.promote_folder`)."""
    from neural_router.feedback.registry import promote_folder

    target = feedback_url.engine if isinstance(feedback_url, FeedbackStore) else feedback_url
    entry = promote_folder(folder, target, "neural-router update")
    log.info("update: registered router %s (%s) for every replica of the store", entry.version, folder)


def counts(split: LoggedSplit, orig: OriginalData) -> dict[str, int]:
    """How many logged requests went where, and how many original prompts were mixed in."""
    return {"n_logged_train": int(split.train.sum()), "n_logged_val": int(split.val.sum()),
            "n_holdout": int(split.hold.sum()), "n_original": len(orig.train) if orig.train is not None else 0}
