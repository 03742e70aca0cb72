"""Leave-one-benchmark-out: how a router does on a benchmark it never saw.

    python -m training.lobo --data ../shared/data/routerbench --data ../shared/data/routerdc7 \
        --output runs/lobo [--config configs/train.yaml] [--only mmlu --only gsm8k]

For each source benchmark B: train on every other benchmark (both pools share the encoder), then on
B's prompts report quality-only routing vs the best single model, the per-benchmark-prior-free AIQ,
and APGR / CPT for a strong/weak pair (gpt-4 vs Mixtral where B is a RouterBench benchmark, the best
vs the worst single model otherwise). Writes ``lobo_report.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from neural_router.data.dataset import load_routing_data
from neural_router.evaluation.report import evaluate
from neural_router.pool import ModelPool
from neural_router.inference.predictors import TorchPredictor
from neural_router.configs import config_path
from neural_router.training.activation_cache import ActivationCache
from neural_router.training.config import load_train_config
from neural_router.training.trainer import train_router

log = logging.getLogger(__name__)


def run_lobo(data: list[str], output: str | Path, config: str | None = None, only: list[str] | None = None,
             overrides: dict | None = None) -> dict:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_train_config(config, overrides)
    pool = ModelPool.from_yaml(config_path("models.yaml"))
    ds = load_routing_data(data, pool, cfg.data)
    results = {}
    cache = ActivationCache()  # frozen-layer activations are the same in every fold: compute them once
    for bench in sorted(set(ds.sources)):
        if only and bench not in only:
            continue
        held = np.array([s == bench for s in ds.sources])
        train, test = ds.subset(~held), ds.subset(held)
        test = test.select_models([m for m in ds.models if np.isfinite(test.scores[:, ds.models.index(m)]).any()])
        fit, val = train.split(cfg.data.val_fraction, cfg.data.split_salt)
        model, tok, hist = train_router(fit, val, pool, cfg, progress=False, activation_cache=cache)
        pred = TorchPredictor(model, tok, pool).predict(test.prompts)
        q1 = np.nanmean(test.scores, axis=0)
        pair = (("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat") if "gpt-4-1106-preview" in test.models
                else (test.models[int(np.nanargmax(q1))], test.models[int(np.nanargmin(q1))]))
        rep = evaluate(pred, train.select_models(test.models), test, pool, baselines=False, pairs=[pair])
        r = rep["routers"]["neural-router"]
        results[bench] = {"n": len(test), "epochs": len(hist), "aiq": r["aiq"],
                          "single_models_aiq": rep["single_models_aiq"],
                          "quality_only": r["quality_only"]["all"], "two_model": r["two_model"][0]}
        log.info("LOBO %s: %s", bench, results[bench])
        (out / "lobo_report.json").write_text(json.dumps(results, indent=2, default=float))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", action="append", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--config")
    ap.add_argument("--only", action="append")
    ap.add_argument("--freeze-layers", type=int, help="override (e.g. -1: heads only, fastest)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--encoder-layers", type=int, help="keep only the encoder's first N layers (e.g. 4)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    res = run_lobo(args.data, args.output, args.config, args.only,
                   {"freeze_layers": args.freeze_layers, "epochs": args.epochs,
                    "encoder_layers": args.encoder_layers})
    print(f"{'benchmark':16s} {'n':>5s} {'router':>7s} {'best1':>7s} {'gain':>7s} {'APGR':>6s}  pair")
    for b, r in res.items():
        q, t = r["quality_only"], r["two_model"]
        print(f"{b:16s} {r['n']:5d} {q['router']:7.4f} {q['best_single']:7.4f} {q['gain']:+7.4f} "
              f"{t['apgr']:6.3f}  {t['strong']} vs {t['weak']}")


if __name__ == "__main__":
    main()
