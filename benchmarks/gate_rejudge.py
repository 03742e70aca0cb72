"""Re-judge the candidates of gated replays with other promotion checks, against the truth.

``benchmarks/gate_accuracy.py`` scores the statistics a replay recorded. This script re-runs the
promotion check itself (``training.update.promotion.check_on_logs``, the code ``run_update`` calls) on every
candidate of replays written with ``bench_feedback.py --gate --keep-weights``, with the reward model
uncalibrated and calibrated, and scores each statistic the same way:

    python benchmarks/gate_rejudge.py runs/kw_cold_gate_s20 runs/kw_cold_gate_s30 \\
        --output benchmarks/results/gate_rejudge.json

For each candidate it rebuilds what the check saw when the replay ran it (the logged requests of the
rounds so far, held out by prompt hash as ``run_update`` holds them out; the router that served and
the candidate) and checks that the check, re-run with the replay's own reward model calibration,
reproduces the DR difference recorded in ``promotion.json``. The statistics:

* ``ips``, ``snips``, ``dr``, ``dm``: new - current with the reward model as it was (the mean of the
  two routers' predicted qualities);
* ``... calibrated``: the same with the reward model calibrated on the training logs
  (``run_update(reward_calibration=10)``, the default);
* ``dr clip 3, calibrated``: DR with importance weights clipped at 3;
* ``dm calibrated, dr veto``: the calibrated DM, unless the upper end of the calibrated DR
  difference's 95 % interval is below 0;
* ``oracle``: the true utility of the two routers' choices on the same held-out prompts (what an
  exact reward model would say: the best any check on these prompts could do).

The truth is the candidate's utility on the replay's evaluation split minus the serving router's.
Only the replay's own rule shaped the replay; every row judges the same candidates after the fact.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from bench_feedback import load_data, load_router, true_utility   # sibling scripts: benchmarks/ is on sys.path
from gate_accuracy import candidates, print_table, score

from neural_router.training.config import UpdateConfig

CALIBRATION = UpdateConfig.model_fields["reward_calibration"].default  # run_update's default


def request_round(request_id: str) -> tuple[int, int]:
    """``ips-r3-17`` -> (3, 17): the replay round and the traffic row of a logged request."""
    _, rnd, row = request_id.rsplit("-", 2)
    return int(rnd.lstrip("r")), int(row)


def rejudge_seed(sd: Path, method: str, data_cache: dict) -> list[dict]:
    from neural_router.feedback.store import FeedbackStore
    from neural_router.policy.routing import Preferences
    from neural_router.pool import ModelPool
    from neural_router.training.activation_cache import ActivationCache, predict_router
    from neural_router.training.update.datasets import is_holdout
    from neural_router.training.update.promotion import check_on_logs, logged_request, policy_probs, pref_weights

    report = json.loads((sd / "bench_feedback.json").read_text())
    a = report["args"]
    if a["data"] not in data_cache:
        data_cache[a["data"]] = load_data(a["data"], ModelPool.from_yaml(a["pool"]))
    ds = data_cache[a["data"]]
    order = np.random.default_rng(a["seed"]).permutation(len(ds))
    start = a["eval"] + a["init"]
    traffic = ds.subset(order[start: start + a["rounds"] * a["per_round"]])
    prefs = Preferences(cost_weight=a["cost_weight"])
    u_true = true_utility(traffic, a["cost_weight"])
    pool = ModelPool.from_yaml(sd / "pool.yaml")
    store = FeedbackStore.from_url(sd / "feedback" / f"{method}.db")
    try:
        pairs = [(d, o) for d, o in store.iter_logged(chosen_only=True) if d.prompt is not None]
    finally:
        store.close()
    cache = ActivationCache()
    rows = []
    for cand in candidates(sd, method):
        pf = cand["promotion_file"]
        promo = json.loads(pf.read_text())
        current_dir = sd / "r0" if "+" not in promo["current_version"] else sd / method / promo["current_version"]
        if not (pf.parent / "model.safetensors").is_file() or not (current_dir / "model.safetensors").is_file():
            raise SystemExit(f"{pf.parent}: router weights were deleted; re-run the replay with --keep-weights")
        upto = [(d, o) for d, o in pairs if request_round(d.request_id)[0] <= cand["round"]]
        held, rest = [], []           # the update's held-out requests, and those it trained on
        for d, o in upto:
            (held if is_holdout(d.prompt, a["holdout"]) else rest).append((d, o))
        logged = [logged_request(d, o, pool) for d, o in held]
        fit = [logged_request(d, o, pool) for d, o in rest]
        if len(logged) != promo["n"]:
            raise SystemExit(f"{pf}: rebuilt {len(logged)} held-out requests, the check saw {promo['n']}")
        cur, new = load_router(current_dir), load_router(pf.parent)
        models = list(new[0].config.models)
        plain = check_on_logs(cur, new, pool, models, logged, [], prefs, None, 200, 0.05, 0, cache)
        calib = check_on_logs(cur, new, pool, models, logged, fit, prefs, CALIBRATION, 200, 0.05, 0, cache)
        # the re-run check with the replay's own calibration must reproduce the recorded DR difference
        ran = {None: plain, CALIBRATION: calib}.get((promo.get("reward_model") or {}).get("calibration"))
        recorded = promo["difference"]["dr"]["value"]
        if ran is None or abs(ran["difference"]["dr"]["value"] - recorded) > 1e-6:
            raise SystemExit(f"{pf}: the re-run check does not reproduce the recorded DR difference "
                             f"{recorded:+.6f} (reward model calibration {promo.get('reward_model')})")
        # the oracle: the true utilities of both routers' choices on these prompts
        prompts = [d["prompt"] for d in logged]
        weights = pref_weights(prefs, [d["preferences"] for d in logged])
        contexts = [d.get("context") or {} for d in logged]
        choice = [policy_probs(predict_router(*r[:2], pool, prompts, r[2], cache), models, pool, weights,
                               contexts).argmax(1) for r in (cur, new)]
        tcol = np.array([traffic.models.index(m) for m in models])
        trow = np.array([request_round(d.request_id)[1] for d, _ in held])
        oracle = float(np.mean(u_true[trow, tcol[choice[1]]] - u_true[trow, tcol[choice[0]]]))
        stats = {k: plain["difference"][k]["value"] for k in ("ips", "snips", "dr", "dm")}
        stats.update({f"{k} calibrated": calib["difference"][k]["value"] for k in ("dr", "dm")})
        stats["dr clip 3, calibrated"] = calib["dr_difference_by_clip"]["3"]
        # DM decides unless DR's interval says the candidate is worse (its upper end below 0)
        dm, dr_hi = calib["difference"]["dm"]["value"], calib["difference"]["dr"]["ci_high"]
        stats["dm calibrated, dr veto"] = dm if dr_hi > 0 else min(dm, dr_hi)
        stats["oracle"] = oracle
        rows.append({**{k: v for k, v in cand.items() if k != "promotion_file"}, "stats": stats,
                     "quality_shift": calib["reward_model"]["quality_shift"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("replays", nargs="+", type=Path, help="bench_feedback.py --gate --keep-weights --out folders")
    ap.add_argument("--method", default="ips", help="the replay's method whose updates to re-judge")
    ap.add_argument("--output", type=Path, help="write the table (and every candidate's statistics) as JSON")
    args = ap.parse_args(argv)
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    data_cache: dict = {}
    every = []
    for rp in args.replays:
        seeds = sorted(p for p in rp.glob("seed*") if (p / "bench_feedback.json").exists()) or [rp]
        for sd in seeds:
            every += rejudge_seed(sd, args.method, data_cache)
            print(f"{sd}: {len(every)} candidates so far", file=sys.stderr, flush=True)
    gain = np.array([r["true_gain"] for r in every])
    part = {"candidates": len(every), "really_better": int((gain > 0).sum()), "statistics": score(every)}
    print_table(", ".join(map(str, args.replays)), part, width=22)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"command": " ".join(sys.argv), **part, "rows": every}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
