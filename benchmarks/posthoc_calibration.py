"""Would a post-hoc correction of the router's quality predictions raise AIQ? Each correction is
fitted on a calibration split carved from the training prompts, which the router does not train on.

    python benchmarks/posthoc_calibration.py [--data ../shared/data/routerbench] [--salts ,b]
        [--config configs/train.yaml] [--freeze-layers -1] [--output benchmarks/results/posthoc_calibration.json]

For each split salt the data is split as ``neural-router train`` splits it; a quarter of the training
prompts (by prompt hash, salt ``calib`` + the split salt) is set aside, the router is trained on the
rest (early stopping on the validation split, as ``train`` does), and on the calibration prompts
these corrections are fitted per model and then scored on the validation split (AIQ, as ``neural-router
eval`` reports it):

- Platt scaling, ``sigmoid(a * logit(q) + b)``, with a Gaussian prior at ``a = 1, b = 0`` as strong as
  K cells (``neural_router.training.update.heads.fit_head_mixture`` with the model's own logit as the one basis);
- a bias shift alone (``calibrate_quality_bias``, the update's ``--bias-calibration K``);
- blends ``(1 - w) * router + w * other`` with kNN on frozen MiniLM embeddings (deployable) and with
  the per-benchmark prior (which needs each prompt's benchmark, so it is not).

Heads only by default (``--freeze-layers -1``, about 3 minutes per salt on 2 cores); pass
``--freeze-layers 3`` for the default router (about 5). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CALIB_SALT = "calib"
STRENGTHS = (1.0, 10.0)
BLENDS = (0.25, 0.5)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", action="append", help="data file or folder (repeatable; default: the "
                                                   "shared RouterBench data)")
    ap.add_argument("--salts", default=",b", help="comma-separated split salts (the empty one is the default)")
    ap.add_argument("--calib-fraction", type=float, default=0.25, help="share of the training prompts set aside")
    ap.add_argument("--config", help="training config (default: configs/train.yaml)")
    ap.add_argument("--freeze-layers", type=int, default=-1, help="as `neural-router train --freeze-layers`")
    ap.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "posthoc_calibration.json"))
    return ap.parse_args(argv)


def corrections(q_cal, s_cal, q_val, blend_with: dict) -> dict[str, np.ndarray]:
    """Corrected validation qualities, each fitted (where it has parameters) on the calibration split."""
    from neural_router.training.losses import logits as _logits
    from neural_router.training.update.heads import calibrate_quality_bias, fit_head_mixture

    z_cal, z_val = _logits(q_cal), _logits(q_val)
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    out = {"router": q_val}
    for k in STRENGTHS:
        a, b = np.ones(q_val.shape[1]), np.zeros(q_val.shape[1])
        for j in range(q_val.shape[1]):
            obs = np.isfinite(s_cal[:, j])
            if obs.any():
                alpha, b[j] = fit_head_mixture(z_cal[obs][:, [j]], s_cal[obs, j], np.ones(int(obs.sum())), k)
                a[j] = alpha[0]
        out[f"platt K={k:g}"] = sig(a * z_val + b)
        d = calibrate_quality_bias(s_cal, q_cal, np.ones_like(q_cal), k)
        out[f"bias K={k:g}"] = sig(z_val + d)
    for name, other in blend_with.items():
        for w in BLENDS:
            out[f"blend {name} w={w:g}"] = (1 - w) * q_val + w * other
    return out


def run_salt(salt: str, data: list[str], args) -> dict:
    from neural_router.evaluation import metrics as M
    from neural_router.evaluation.baselines import BenchmarkPriorBaseline, KNNBaseline
    from neural_router.data.dataset import load_routing_data, prompt_hash_unit
    from neural_router.evaluation.report import eval_costs, frozen_embeddings
    from neural_router.pool import ModelPool
    from neural_router.inference.predictors import load_predictor
    from neural_router.configs import config_path
    from neural_router.training.config import load_train_config
    from neural_router.training.trainer import train_router

    pool = ModelPool.from_yaml(config_path("models.yaml"))
    cfg = load_train_config(args.config, {"freeze_layers": args.freeze_layers})
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"split_salt": salt})})
    ds = load_routing_data(data, pool, cfg.data)
    train, val = ds.split(cfg.data.val_fraction, salt)
    in_cal = np.array([prompt_hash_unit(p, CALIB_SALT + salt) < args.calib_fraction for p in train.prompts])
    fit, cal = train.subset(~in_cal), train.subset(in_cal)
    print(f"salt {salt!r}: training {len(fit)}, calibration {len(cal)}, validation {len(val)} prompts", flush=True)
    model, tok, _ = train_router(fit, val, pool, cfg, progress=False)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        tok.save_pretrained(d)
        pool.subset(model.config.models).to_yaml(Path(d) / "models.yaml")
        pred = load_predictor(d, device="cpu")
        p_cal, p_val = pred.predict(cal.prompts), pred.predict(val.prompts)
    emb_fit, emb_cal, emb_val = (frozen_embeddings(x.prompts) for x in (fit, cal, val))
    knn = KNNBaseline(k=40).fit(emb_fit, fit.scores)
    prior = BenchmarkPriorBaseline().fit(fit.sources, fit.scores, eval_costs(fit, pool))
    extra_val = {"knn": knn.predict(emb_val), "prior": prior.predict(val.sources)[0]}
    extra_cal = {"knn": knn.predict(emb_cal), "prior": prior.predict(cal.sources)[0]}
    qs = corrections(p_cal.quality, cal.scores, p_val.quality, extra_val)
    scores, costs = val.scores.astype(np.float64), eval_costs(val, pool)
    lambdas = M.lambda_grid(costs, n=80)
    rows = {name: M.router_report(name, scores, costs, q, p_val.cost_usd, lambdas)["aiq"] for name, q in qs.items()}
    # the same blends on the calibration prompts: a second look at the unfitted corrections
    cal_costs = eval_costs(cal, pool)
    cal_rows = {"router": M.router_report("router", cal.scores, cal_costs, p_cal.quality, p_cal.cost_usd,
                                          M.lambda_grid(cal_costs, n=80))["aiq"]}
    for name, other in extra_cal.items():
        for w in BLENDS:
            q = (1 - w) * p_cal.quality + w * other
            cal_rows[f"blend {name} w={w:g}"] = M.router_report("b", cal.scores, cal_costs, q, p_cal.cost_usd,
                                                                M.lambda_grid(cal_costs, n=80))["aiq"]
    return {"n": {"train": len(fit), "calibration": len(cal), "validation": len(val)},
            "validation_aiq": rows, "calibration_aiq": cal_rows}


def main(argv=None) -> int:
    args = parse_args(argv)
    data = args.data or [str(REPO.parent / "shared" / "data" / "routerbench")]
    salts = args.salts.split(",")
    res = {"data": data, "freeze_layers": args.freeze_layers, "calib_fraction": args.calib_fraction,
           "salts": {s: run_salt(s, data, args) for s in salts}}
    print(f"\nAIQ on the validation split (salts {', '.join(repr(s) for s in salts)}); change against the router:")
    for name in res["salts"][salts[0]]["validation_aiq"]:
        vals = [res["salts"][s]["validation_aiq"][name] for s in salts]
        base = [res["salts"][s]["validation_aiq"]["router"] for s in salts]
        print(f"  {name:22s} " + "  ".join(f"{v:.4f} ({v - b:+.4f})" for v, b in zip(vals, base)))
    print("blends scored on the calibration prompts instead:")
    for name in res["salts"][salts[0]]["calibration_aiq"]:
        vals = [res["salts"][s]["calibration_aiq"][name] for s in salts]
        base = [res["salts"][s]["calibration_aiq"]["router"] for s in salts]
        print(f"  {name:22s} " + "  ".join(f"{v:.4f} ({v - b:+.4f})" for v, b in zip(vals, base)))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
