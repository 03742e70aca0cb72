"""Would more labeled data help? The default router and the baselines trained on a share of the
training split, each scored on the same validation split.

    python benchmarks/learning_curve.py [--data ../shared/data/routerbench] [--fractions 0.5,0.75,1]
        [--salts ,b] [--config configs/train.yaml] [--output benchmarks/results/learning_curve.json]

For each split salt the data is split as ``neural-router train`` splits it; for each fraction a
deterministic share of the training prompts (by prompt hash, salt ``learning-curve``; the smaller
shares are subsets of the larger ones) trains the router and the baselines (kNN, MLP,
per-benchmark prior), and all are scored on the full validation split (AIQ, as ``neural-router
eval`` reports it). Prints a table and writes JSON. Each router takes as long as ``neural-router
train`` on that share (about 3 minutes for all of RouterBench on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SUBSAMPLE_SALT = "learning-curve"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", help="data file or folder (repeatable; default: the "
                                                   "shared RouterBench data)")
    ap.add_argument("--fractions", default="0.5,0.75,1", help="shares of the training split")
    ap.add_argument("--salts", default=",b", help="comma-separated split salts (the empty one is the default)")
    ap.add_argument("--config", help="training config (default: configs/train.yaml)")
    ap.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "learning_curve.json"))
    args = ap.parse_args(argv)
    try:
        args.fractions = [float(f) for f in args.fractions.split(",") if f]
    except ValueError:
        ap.error(f"--fractions: {args.fractions!r} must be comma-separated numbers in (0, 1]")
    if not args.fractions or not all(0 < f <= 1 for f in args.fractions):
        ap.error(f"--fractions: every share must be in (0, 1], got {args.fractions}")
    args.salts = args.salts.split(",")
    args.data = args.data or [str(REPO.parent / "shared" / "data" / "routerbench")]
    return args


def one(data, salt: str, fractions: list[float], config, cache) -> list[dict]:
    from neural_router.data.dataset import load_routing_data, prompt_hash_unit
    from neural_router.evaluation.report import evaluate
    from neural_router.pool import ModelPool
    from neural_router.configs import config_path
    from neural_router.training.activation_cache import predict_router
    from neural_router.training.config import load_train_config
    from neural_router.training.trainer import train_router

    base = load_train_config(config)
    cfg = base.model_copy(update={"data": base.data.model_copy(update={"split_salt": salt})})
    pool = ModelPool.from_yaml(config_path("models.yaml"))
    ds = load_routing_data(data, pool, cfg.data)
    train, val = ds.split(cfg.data.val_fraction, salt)
    u = np.array([prompt_hash_unit(p, SUBSAMPLE_SALT) for p in train.prompts])
    rows = []
    for f in fractions:
        sub = train.subset(np.flatnonzero(u < f)) if f < 1 else train
        t0 = time.time()
        model, tok, history = train_router(sub, val, pool, cfg, progress=False, activation_cache=cache)
        minutes = (time.time() - t0) / 60
        preds = predict_router(model, tok, pool, val.prompts, cfg, cache)
        rep = evaluate(preds, sub, val, pool, encoder=cfg.encoder)
        row = {"split_salt": salt, "fraction": f, "train_prompts": len(sub), "val_prompts": len(val),
               "epochs": len(history), "train_minutes": minutes,
               "aiq": {name: r["aiq"] for name, r in rep["routers"].items()},
               "single_models_aiq": rep["single_models_aiq"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main(argv=None) -> dict:
    from neural_router.training.activation_cache import ActivationCache

    args = parse_args(argv)
    cache = ActivationCache()  # the frozen layers are the same in every run: encode each prompt once
    rows = [r for salt in args.salts for r in one(args.data, salt, args.fractions, args.config, cache)]
    names = list(rows[0]["aiq"])
    print(f"\n{'salt':>5} {'share':>6} {'prompts':>8} " + " ".join(f"{n:>16}" for n in names)
          + f" {'router - prior':>15}")
    for r in rows:
        margin = r["aiq"]["neural-router"] - r["aiq"].get("benchmark-prior", float("nan"))
        print(f"{r['split_salt']!r:>5} {r['fraction']:>6.2f} {r['train_prompts']:>8} "
              + " ".join(f"{r['aiq'][n]:>16.4f}" for n in names) + f" {margin:>+15.4f}")
    report = {"command": " ".join(sys.argv), "data": args.data, "rows": rows}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return report


if __name__ == "__main__":
    main()
