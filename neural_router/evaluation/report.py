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
from neural_router.data.dataset import RoutingDataset
from neural_router.pool import ModelPool
from neural_router.inference.interface import Predictions

log = logging.getLogger(__name__)


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


def evaluate(predictions: Predictions, train: RoutingDataset, test: RoutingDataset, pool: ModelPool,
             baselines: bool = True, encoder: str = "default", pairs: list[tuple[str, str]] | None = None,
             plot_path: str | Path | None = None, seed: int = 0) -> dict[str, Any]:
    models = test.models
    cols = [predictions.models.index(m) for m in models]
    pq, pc = predictions.quality[:, cols], predictions.cost_usd[:, cols]
    scores, costs = test.scores.astype(np.float64), eval_costs(test, pool)
    lambdas = M.lambda_grid(costs, n=80)
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
        curves = {n: (r["curve"]["costs"], r["curve"]["quality"]) for n, r in report["routers"].items()}
        singles = {m: (v["cost"], v["quality"]) for m, v in report["single_models"].items()}
        M.plot_cost_quality(curves, singles, plot_path, title=f"cost vs quality on {len(test)} held-out prompts")
        report["plot"] = str(plot_path)
    return report

