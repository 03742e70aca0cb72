"""The data of an update: logged outcomes as a dataset with per-cell weights, split by prompt hash
into training, early-stopping and held-out (promotion check) parts, mixed with a sample of the
router's original training data so that it does not forget."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neural_router.data.dataset import (RoutingDataset, load_recorded_data, load_routing_data, prompt_hash_unit,
                                        recorded_sources)
from neural_router.feedback.store import FeedbackStore, safe_url
from neural_router.pool import ModelPool
from neural_router.training.config import TrainConfig, UpdateConfig
from neural_router.training.update.promotion import logged_request

log = logging.getLogger(__name__)

HOLDOUT_SALT = "offpolicy-holdout"
LOG_VAL_SALT = "update-validation"


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
    """The non-empty ``parts`` (same models) one after the other."""
    parts = [p for p in parts if len(p)]
    if not parts:
        raise ValueError("nothing to concatenate")
    models = parts[0].models
    assert all(p.models == models for p in parts)
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return RoutingDataset([x for p in parts for x in p.prompts], list(models), cat("scores"),
                          cat("cost_usd"), cat("latency_ms"), cat("output_tokens"),
                          [x for p in parts for x in p.sources], [x for p in parts for x in p.ids])


def _group_by_request(rows: list[dict[str, Any]], col: dict[str, int], pool: ModelPool):
    """(prompts, ids, sources, per request [(column, row)], skipped counts) of ``export_long`` rows."""
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
    return prompts, ids, sources, cells, skipped


def logged_dataset(rows: list[dict[str, Any]], models: list[str], pool: ModelPool, clip: float | None,
                   importance_weighting: bool = True, normalize: bool = False
                   ) -> tuple[RoutingDataset, np.ndarray, dict[str, int]]:
    """``export_long`` rows -> (one dataset row per request, per-cell weights [N, M], counts).

    Chosen outcomes weigh ``min(1/propensity, clip)`` (1 without ``importance_weighting``); with
    ``normalize`` these weights are divided by their mean (self-normalised: the logs keep the total
    weight naive retraining gives them, importance weighting only redistributes it). Outcomes of
    other models of the same request (e.g. shadow evaluations) weigh 1.
    """
    prompts, ids, sources, cells, skipped = _group_by_request(rows, {m: j for j, m in enumerate(models)}, pool)
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
    """Whether ``prompt`` is in the held-out share ``fraction`` of the logs (by prompt hash)."""
    return prompt_hash_unit(prompt, HOLDOUT_SALT) < fraction


def row_shares(models: list[str], n_now, seen_before: dict[str, int], interpolate: float) -> np.ndarray:
    """Per model, the share of the update its head rows keep: at least ``interpolate``, and at least
    the share of this update's observations of that model that the parent had not seen (a model the
    parent never saw outcomes of, like a new pool member, keeps all of its update; a parent trained
    before these counts were recorded falls back to ``interpolate``)."""
    return np.array([max(interpolate, 1.0 - min(seen_before.get(m, 0), n) / n) if n and seen_before
                     else interpolate for m, n in zip(models, n_now)], dtype=np.float32)


def read_logs(feedback: str | Path | FeedbackStore, pool: ModelPool, router_version: str | None
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(``export_long`` rows, every logged request with its chosen outcome as the trust region and
    the promotion check read it). ValueError when the store holds no outcome with a prompt."""
    own_store = not isinstance(feedback, FeedbackStore)
    store = FeedbackStore.from_url(feedback, must_exist=True) if own_store else feedback
    try:
        rows = store.export_long(router_version=router_version)
        requests = [logged_request(d, o, pool)
                    for d, o in store.iter_logged(chosen_only=True, router_version=router_version)
                    if d.prompt is not None]
    finally:
        if own_store:
            store.close()
    if not rows:
        raise ValueError(f"the feedback store {safe_url(feedback)} has no logged outcomes with a "
                         "prompt" + (f" for router version {router_version!r}" if router_version else ""))
    return rows, requests


@dataclass
class LoggedSplit:
    """The logged requests as one dataset with weights, and which rows go where."""

    logs: RoutingDataset
    weights: np.ndarray
    skipped: dict[str, int]
    hold: np.ndarray   # held out for the promotion check
    val: np.ndarray    # early stopping

    @property
    def train(self) -> np.ndarray:
        return ~self.hold & ~self.val


def split_logs(rows: list[dict[str, Any]], models: list[str], pool: ModelPool, uc: UpdateConfig) -> LoggedSplit:
    """The logged outcomes weighted as ``uc`` says, split by prompt hash; ValueError when nothing is
    left to train on."""
    logs, weights, skipped = logged_dataset(rows, models, pool, uc.clip, uc.importance_weighting,
                                            uc.normalize_weights)
    hold = np.array([is_holdout(p, uc.holdout_fraction) for p in logs.prompts], dtype=bool)
    lval = np.array([prompt_hash_unit(p, LOG_VAL_SALT) < uc.log_val_fraction for p in logs.prompts]) & ~hold
    split = LoggedSplit(logs, weights, skipped, hold, lval)
    if not split.train.any():
        raise ValueError(f"all {len(logs)} logged requests fell into the held-out part "
                         f"(holdout_fraction={uc.holdout_fraction}); log more traffic or lower it")
    return split


@dataclass
class OriginalData:
    """The router's original training data, split as it was trained (None: none found)."""

    paths: list[str]
    val_fraction: float
    split_salt: str
    train: RoutingDataset | None = None
    val: RoutingDataset | None = None


def original_data(router_dir: Path, tm: dict, models: list[str], pool: ModelPool, cfg: TrainConfig,
                  uc: UpdateConfig) -> OriginalData:
    """``uc.data`` or the data named in the router's ``training_metrics.json`` (``tm``), with columns
    ``models``, split as the router was trained; at most ``uc.original_sample`` training prompts."""
    data = uc.data
    paths = recorded_sources([str(d) for d in data] if data else list(tm.get("data") or []))
    out = OriginalData(paths, tm.get("val_fraction", cfg.data.val_fraction), tm.get("split_salt", cfg.data.split_salt))
    if not paths:
        log.warning("no original training data (pass data=...): updating on logged outcomes only, "
                    "which risks forgetting what the router knew")
        return out
    dcfg = cfg.data.model_copy(update={"unknown_models": "skip"})
    ds = (load_routing_data(paths, pool, dcfg) if data
          else load_recorded_data(paths, f"{router_dir}/training_metrics.json", pool, dcfg))
    out.train, out.val = align_models(ds, models).split(out.val_fraction, out.split_salt)
    if uc.original_sample is not None and len(out.train) > uc.original_sample:
        idx = np.sort(np.random.default_rng(uc.seed).choice(len(out.train), uc.original_sample, replace=False))
        out.train = out.train.subset(idx)
    return out


def training_sets(orig: OriginalData, split: LoggedSplit
                  ) -> tuple[RoutingDataset, np.ndarray, RoutingDataset | None, np.ndarray | None]:
    """(train, its weights, val, its weights): the original data (weight 1) and the logged parts."""
    logs_train, w_train = split.logs.subset(split.train), split.weights[split.train]
    logs_val, w_val = split.logs.subset(split.val), split.weights[split.val]
    if orig.train is not None and len(orig.train):
        train = concat([orig.train, logs_train])
        sw = np.concatenate([np.ones_like(orig.train.scores, dtype=np.float32), w_train])
    else:
        train, sw = concat([logs_train]), w_train
    vparts = [(orig.val, np.ones_like(orig.val.scores)) if orig.val is not None else None, (logs_val, w_val)]
    vparts = [v for v in vparts if v is not None and len(v[0])]
    val = concat([v[0] for v in vparts]) if vparts else None
    val_w = np.concatenate([v[1] for v in vparts]).astype(np.float32) if vparts else None
    return train, sw, val, val_w
