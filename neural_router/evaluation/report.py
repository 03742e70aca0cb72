"""Evaluate a router against baselines on a held-out split: JSON report + PNG plot.

Baselines: random, each single model, oracle, kNN and MLP on frozen (mean-pooled) encoder
embeddings, and the per-benchmark prior (each model's mean score and cost on the prompt's source
benchmark: a router that only recognises the task). All routers are swept over the cost weight λ
(argmax of predicted quality − λ·predicted cost) and scored on the TRUE outcomes and costs.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from neural_router.evaluation import metrics as M
from neural_router.evaluation.baselines import BenchmarkPriorBaseline, KNNBaseline, MLPBaseline, mean_cost_predictor
from neural_router.data.dataset import DataConfig, RoutingDataset, load_recorded_data, load_routing_data
from neural_router.pool import ModelPool
from neural_router.inference.interface import Predictions

log = logging.getLogger(__name__)

LAMBDA_STEPS = 80  # cost weights λ in each router's sweep (``metrics.lambda_grid``)


def split_as_trained(tm: dict, data: list[str] | None, models: list[str], pool: ModelPool,
                     tm_path: Path | str = "training_metrics.json") -> tuple[RoutingDataset, RoutingDataset, str]:
    """``data`` split into (train, validation) exactly as the training recorded in ``tm`` (a
    ``training_metrics.json``, or {} for the defaults) split it: same fraction and salt, which is
    returned too. Without ``data``, the data ``tm`` records are loaded. Restricted to ``models``;
    models of other pools in the same data are skipped, not errors. ValueError (DataError) when no
    data is named, it cannot be loaded or holds none of ``models``; OSError for unreadable files."""
    dcfg = DataConfig(**tm.get("config", {}).get("data", {})) if tm else DataConfig()
    dcfg = dcfg.model_copy(update={"unknown_models": "skip"})
    if data:
        ds = load_routing_data(data, pool, dcfg)
    elif tm.get("data"):
        ds = load_recorded_data(tm["data"], str(tm_path), pool, dcfg)
    else:
        raise ValueError(f"{tm_path} names no training data; pass --data")
    if not set(models) & set(ds.models):
        raise ValueError(f"the data holds none of the router's models ({', '.join(models)}; the data's: "
                         f"{', '.join(ds.models) or 'none the pool knows'}); evaluate on data of the router's pool")
    ds = ds.select_models([m for m in models if m in ds.models])
    salt = tm.get("split_salt", dcfg.split_salt)
    train, val = ds.split(tm.get("val_fraction", dcfg.val_fraction), salt)
    return train, val, salt


def frozen_embeddings(prompts: list[str], encoder: str = "default", max_length: int = 256,
                      head_tokens: int = 32, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled embeddings of the pretrained encoder (no fine-tuning), for the kNN/MLP baselines."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from neural_router.modeling.model import mean_pool, resolve_encoder
    from neural_router.modeling.text import encode

    path = resolve_encoder(encoder)
    tok, enc = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = np.zeros((len(prompts), enc.config.hidden_size), dtype=np.float32)
    order = np.argsort([len(p) for p in prompts])
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            idx = order[s:s + batch_size]
            e = encode(tok, [prompts[i] for i in idx], max_length, head_tokens)
            am = torch.from_numpy(e.attention_mask)
            h = enc(input_ids=torch.from_numpy(e.input_ids), attention_mask=am).last_hidden_state
            out[idx] = mean_pool(h, am).numpy()
    return out


def eval_costs(ds: RoutingDataset, pool: ModelPool) -> np.ndarray:
    """True costs where observed; elsewhere the pool's profile at the observed/median output length."""
    sub = pool.subset(ds.models)
    in_tok = np.array([max(1.0, len(p) / 4.0) for p in ds.prompts])
    fill = np.nanmedian(ds.output_tokens) if np.isfinite(ds.output_tokens).any() else 256.0
    out = np.where(np.isfinite(ds.output_tokens), ds.output_tokens, fill)
    return np.where(np.isfinite(ds.cost_usd), ds.cost_usd, sub.cost_usd(in_tok, out))


def quality_only(scores: np.ndarray, pred_quality: np.ndarray, sources: list[str],
                 models: list[str]) -> dict[str, Any]:
    """Per source benchmark: quality of argmax(predicted quality) vs the best single model there;
    ``all``: the same over every prompt; with several benchmarks, ``mean_over_benchmarks``: the
    unweighted mean over benchmarks against the single model with the best such mean (among the
    models observed on every benchmark), the form of the RouterDC paper's headline comparison."""
    out: dict[str, Any] = {}
    src = np.array(sources)
    benches = sorted(set(sources))
    per_model: dict[str, np.ndarray] = {}
    for s in benches + ["all"]:
        rows = np.ones(len(src), bool) if s == "all" else src == s
        sc, pq = scores[rows], np.where(np.isfinite(scores[rows]), pred_quality[rows], -np.inf)
        choice = pq.argmax(1)
        routed = float(np.nanmean(sc[np.arange(len(sc)), choice]))
        with warnings.catch_warnings():   # a model never observed on this benchmark: NaN, expected
            warnings.simplefilter("ignore", RuntimeWarning)
            single = per_model[s] = np.nanmean(sc, axis=0)
        best = int(np.nanargmax(single))
        out[s] = {"n": int(rows.sum()), "router": routed, "best_single": float(single[best]),
                  "best_single_model": models[best], "gain": routed - float(single[best]),
                  "oracle": float(np.nanmean(np.nanmax(sc, axis=1)))}
    macro = np.mean([per_model[b] for b in benches], axis=0)   # NaN unless observed on every benchmark
    if len(benches) > 1 and np.isfinite(macro).any():
        best = int(np.nanargmax(macro))
        routed = float(np.mean([out[b]["router"] for b in benches]))
        out["mean_over_benchmarks"] = {
            "n": len(src), "router": routed, "best_single": float(macro[best]),
            "best_single_model": models[best], "gain": routed - float(macro[best]),
            "oracle": float(np.mean([out[b]["oracle"] for b in benches]))}
    return out


def two_model(scores: np.ndarray, pred_quality: np.ndarray, models: list[str], strong: str,
              weak: str) -> dict[str, Any]:
    s, w = models.index(strong), models.index(weak)
    ok = np.isfinite(scores[:, s]) & np.isfinite(scores[:, w])
    win = pred_quality[ok, s] - pred_quality[ok, w]
    return {"strong": strong, "weak": weak, "n": int(ok.sum()),
            "apgr": M.apgr(scores[ok, s], scores[ok, w], win),
            "cpt50": M.cpt(scores[ok, s], scores[ok, w], win, 0.5),
            "cpt80": M.cpt(scores[ok, s], scores[ok, w], win, 0.8)}


def _on_test_models(predictions: Predictions, test: RoutingDataset) -> tuple[np.ndarray, np.ndarray]:
    """Predicted quality and cost in the columns of ``test.models`` (a subset of the router's)."""
    cols = [predictions.models.index(m) for m in test.models]
    return predictions.quality[:, cols], predictions.cost_usd[:, cols]


def router_aiq(predictions: Predictions, test: RoutingDataset, pool: ModelPool) -> float:
    """AIQ of routing on ``predictions`` over :func:`evaluate`'s λ sweep, scored on ``test``'s true
    outcomes and costs: the ``aiq`` :func:`evaluate` reports for the router (quality units)."""
    pq, pc = _on_test_models(predictions, test)
    scores, costs = test.scores.astype(np.float64), eval_costs(test, pool)
    return float(M.router_report("router", scores, costs, pq, pc, M.lambda_grid(costs, n=LAMBDA_STEPS))["aiq"])


def evaluate(predictions: Predictions, train: RoutingDataset, test: RoutingDataset, pool: ModelPool,
             baselines: bool = True, encoder: str = "default", pairs: list[tuple[str, str]] | None = None,
             plot_path: str | Path | None = None, seed: int = 0) -> dict[str, Any]:
    """The router's ``predictions`` for ``test`` and, with ``baselines``, the baselines fitted on
    ``train`` (see the module docstring), scored on ``test``'s true outcomes; a JSON-serialisable
    report (single models, oracle, random, one entry per router). ``plot_path``: also the PNG of
    every router's cost-quality curve beside the single models (``metrics.plot_cost_quality``)."""
    models = test.models
    pq, pc = _on_test_models(predictions, test)
    scores, costs = test.scores.astype(np.float64), eval_costs(test, pool)
    lambdas = M.lambda_grid(costs, n=LAMBDA_STEPS)
    report: dict[str, Any] = {"n_test": len(test), "n_train": len(train), "models": models}
    q1, c1 = M.single_model_points(scores, costs)
    c_min, c_max = float(np.nanmin(c1)), float(np.nanmax(c1))
    report["single_models"] = {m: {"quality": float(q), "cost": float(c)} for m, q, c in zip(models, q1, c1)}
    report["single_models_aiq"] = M.single_models_aiq(scores, costs)
    oq, oc = M.oracle_point(scores, costs)
    rq, rc = M.random_point(scores, costs)
    report["oracle"] = {"quality": oq, "cost": oc}
    report["random"] = {"quality": rq, "cost": rc, "aiq": M.aiq([rc], [rq], c_min, c_max)}

    routers = {"neural-router": (pq, pc)}
    if baselines:
        tr_costs = eval_costs(train, pool)
        mean_cost = np.broadcast_to(mean_cost_predictor(tr_costs), pq.shape)
        emb_tr = frozen_embeddings(train.prompts, encoder)
        emb_te = frozen_embeddings(test.prompts, encoder)
        routers["knn"] = (KNNBaseline(k=40).fit(emb_tr, train.scores).predict(emb_te), mean_cost)
        routers["mlp"] = (MLPBaseline(hidden=256, seed=seed).fit(emb_tr, train.scores).predict(emb_te), mean_cost)
        if len(set(train.sources)) > 1 or train.sources[0] != "unknown":
            prior = BenchmarkPriorBaseline().fit(train.sources, train.scores, tr_costs)
            routers["benchmark-prior"] = prior.predict(test.sources)
    report["routers"] = {}
    for name, (q, c) in routers.items():
        r = M.router_report(name, scores, costs, q, c, lambdas)
        r["prediction_metrics"] = M.per_model_prediction_metrics(scores, q, models)
        r["quality_only"] = quality_only(scores, q, test.sources, models)
        r["two_model"] = [two_model(scores, q, models, s, w) for s, w in (pairs or [])
                          if s in models and w in models]
        report["routers"][name] = r
    if len(models) == 2:
        report["two_model"] = {n: two_model(scores, q, models, models[int(np.nanargmax(q1))],
                                            models[int(np.nanargmin(q1))]) for n, (q, _) in routers.items()}
    if plot_path is not None:
        curves = {f"{n} (AIQ {r['aiq']:.3f})": (r["curve"]["costs"], r["curve"]["quality"])
                  for n, r in report["routers"].items()}
        singles = {m: (v["cost"], v["quality"]) for m, v in report["single_models"].items()}
        M.plot_cost_quality(curves, singles, plot_path, title=f"cost vs quality on {len(test)} held-out prompts")
        report["plot"] = str(plot_path)
    return report

