"""Out of domain, which per-prompt score ranks a benchmark's prompts best for sending them to the
strong model? Leave-one-benchmark-out as ``python -m training.lobo`` runs it (heads only, MiniLM's
first four layers, 6 epochs: the four-layer column of docs/results.md), scored by APGR with five scores:
the predicted difference q_strong - q_weak (what ``neural-router eval`` uses), its logit form, the
weak model's predicted quality (negated), the strong model's, and the mean predicted quality over
the benchmark's models (negated: a difficulty score).

    python benchmarks/ood_win_scores.py OUTPUT.json ['{"encoder_layers": 4}'] [bench,bench,...]

About 5 minutes on 2 cores for all nine folds. Prints one line per fold and the means.
"""
import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from neural_router.data.dataset import load_routing_data  # noqa: E402
from neural_router.pool import ModelPool  # noqa: E402
from neural_router.inference.predictors import TorchPredictor  # noqa: E402
from neural_router.training.activation_cache import ActivationCache  # noqa: E402
from neural_router.training.trainer import train_router  # noqa: E402
from neural_router.evaluation import metrics as M  # noqa: E402
from neural_router.configs import config_path  # noqa: E402
from neural_router.training.config import load_train_config  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("output", help="JSON file for the results")
ap.add_argument("overrides", nargs="?", default="{}", type=json.loads,
                help='training config overrides as JSON, e.g. \'{"encoder_layers": 4}\'')
ap.add_argument("benches", nargs="?", help="comma-separated benchmarks to hold out (default: all)")
ap.add_argument("--data", action="append", help="data files or folders (default: the shared RouterBench "
                                                 "and RouterDC data beside the repository)")
args = ap.parse_args()
out, overrides = args.output, args.overrides
benches = args.benches.split(",") if args.benches else None
data = args.data or [str(REPO.parent / "shared" / "data" / d) for d in ("routerbench", "routerdc7")]
cfg = load_train_config(None, {"freeze_layers": -1, "epochs": 6, "encoder_layers": 4, **overrides})
pool = ModelPool.from_yaml(config_path("models.yaml"))
ds = load_routing_data(data, pool, cfg.data)
cache = ActivationCache()
res = {}
for bench in sorted(set(ds.sources)):
    if benches and bench not in benches: continue
    held = np.array([s == bench for s in ds.sources])
    train, test = ds.subset(~held), ds.subset(held)
    fit, val = train.split(cfg.data.val_fraction, cfg.data.split_salt)
    model, tok, hist = train_router(fit, val, pool, cfg, progress=False, activation_cache=cache)
    pred = TorchPredictor(model, tok, pool).predict(test.prompts)
    ms = test.models
    obs = [m for m in ms if np.isfinite(test.scores[:, ms.index(m)]).any()]
    q1 = {m: np.nanmean(test.scores[:, ms.index(m)]) for m in obs}
    if "gpt-4-1106-preview" in obs:
        s, w = "gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"
    else:
        s, w = max(q1, key=q1.get), min(q1, key=q1.get)
    Q = pred.quality
    js, jw = pred.models.index(s), pred.models.index(w)
    ok = np.isfinite(test.scores[:, ms.index(s)]) & np.isfinite(test.scores[:, ms.index(w)])
    ss, sw = test.scores[ok, ms.index(s)], test.scores[ok, ms.index(w)]
    pool_cols = [pred.models.index(m) for m in obs]
    lg = lambda p: np.log(np.clip(p, 1e-4, 1-1e-4) / (1 - np.clip(p, 1e-4, 1-1e-4)))
    wins = {"diff": Q[ok, js] - Q[ok, jw], "logit_diff": lg(Q[ok, js]) - lg(Q[ok, jw]),
            "neg_weak": -Q[ok, jw], "strong": Q[ok, js], "difficulty": -Q[ok][:, pool_cols].mean(1)}
    res[bench] = {"pair": [s, w], "n": int(ok.sum()), **{k: M.apgr(ss, sw, v) for k, v in wins.items()}}
    print(bench, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in res[bench].items()}, flush=True)
keys = ["diff", "logit_diff", "neg_weak", "strong", "difficulty"]
print("mean", {k: round(float(np.mean([r[k] for r in res.values()])), 3) for k in keys})
json.dump(res, open(out, "w"), indent=1)
