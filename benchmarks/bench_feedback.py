"""Does learning from logged outcomes work? A replay simulation on real RouterBench data.

    python benchmarks/bench_feedback.py [--data ../shared/data/routerbench] [--out runs/bench_feedback]
        [--rounds 5] [--per-round 300] [--init 150] [--eval 450] [--cost-weight 0.3]
        [--exploration epsilon_greedy|thompson] [--epsilon 0.2] [--thompson-evidence K] [--no-boost]
        [--clip 10] [--epochs 10]
        [--freeze-layers -1] [--methods static,naive,ips,full] [--ablation] [--seeds 0,1,2]
        [--margin 0.1] [--gate] [--promote-on dm] [--new-model zero-one-ai/Yi-34B-Chat] [--raw-weights]
        [--head-refit K|off] [--refit-naive] [--interpolate 0.5] [--interpolate-all] [--bias-calibration K] [--head-transfer P] [--soup N]
        [--init-bias] [--max-shift S] [--reward-calibration K|off] [--keep-weights] [--pessimism K]

The prompts are shuffled once and split into: an evaluation split (fixed), a small labeled slice that
trains the initial router, and traffic served in rounds (prompts the initial router never saw). In
each round every method routes the round's prompts with its current router at the given cost weight,
the simulation reveals the **true RouterBench score and cost of the served model only**, logs the
decision and the outcome in a FeedbackStore (SQLite), and the method updates its router with
``neural_router.training.update.run_update`` (the real update path: held-out logs, safe-promotion estimates).
Methods:

* ``static``: no updates (the initial router throughout);
* ``naive``: greedy routing (propensity 1) and retraining on the logs without importance weights;
* ``ips``: exploration (``--exploration``: epsilon-greedy or Thompson sampling, from
  ``neural_router.policy.exploration``) with logged propensities, and the update with clipped
  inverse-propensity weights, self-normalised as ``neural-router update`` does by default
  (``--raw-weights``: the raw clipped weights), which refits only the quality head on the frozen
  trunk (``--head-refit K``, default as in ``neural-router update``; ``off`` = fine-tune and keep
  half of each update's change, ``--interpolate``);
  With ``--exploration thompson --thompson-evidence K`` the Thompson draws of each model are as wide
  as the serving router's evidence for it says (``ExplorationConfig.thompson_evidence_half``);
* ``ips_thompson`` (via ``--methods``): the same with Thompson sampling whatever ``--exploration``;
* ``explore_noweight`` (with ``--ablation``): the same exploration, updated without weights;
* ``full``: greedy routing, but the outcomes of *all* models on the same prompts are logged
  (the full-information ceiling).

After each round each method's new router is scored on the evaluation split with the true outcomes:
mean utility of its greedy choices, ``score - cost_weight * cost / max cost`` (true costs), mean
quality and cost, and AIQ (RouterBench's area under the cost-quality hull). Also reported: the
utility actually served during the round (exploration has a price) and the promotion verdict of
``run_update`` next to whether the new router really was better on the evaluation split.

By default every method adopts its new router each round (so the curves show what each update
learns) and the promotion verdict is only recorded. With ``--gate`` the exploring methods adopt a new
router only when the off-policy check promotes it (as ``neural-router update`` + ``/admin/reload`` do
in production); their curve is then the utility of the router actually serving after each round.
With ``--new-model NAME`` the replay is a cold-start scenario: NAME is not in the pool when the
initial router is trained (its outcomes are left out of the initial slice) and joins it after round 1:
every update from then on passes the full pool (``run_update(pool_file=...)``), so NAME starts from
the cold-start prior, and the exploring methods boost it (``ExplorationConfig.boost_models``, as
``exploration.boost_models`` does in the service). Naive retraining routes greedily, so it sees NAME
only where the prior beats every other prediction (``--no-boost``: no boost branch; the new model
gets traffic only from the exploration policy itself). The exploring methods' updates rewrite NAME's
quality head as a mixture of the known models' heads fitted to its outcomes, with a prior at their
average as strong as P outcomes (``--head-transfer P``, default as in ``run_update``; 0 = off).
The update options (``--clip``, ``--promote-on``, ``--head-refit``, ...) are ``neural-router update``'s,
with its defaults (:class:`neural_router.training.config.UpdateConfig`).
With ``--max-shift S`` the exploring methods' updates are scaled back toward the router they
fine-tuned from until at most S of the logged traffic moves to another model (``run_update(max_shift=)``,
a trust region on the policy; off by default).
With ``--pessimism K`` the exploring methods route, when serving and when scored, on each model's
predicted quality lowered by K standard errors of their router's evidence for it
(``neural_router.policy.pessimistic_quality``; the round-0 row stays the initial router's own).
Utility and AIQ are computed over the models each router can route to.
The default sizes (150 initial prompts, 300 per round, 450 evaluation prompts) leave little to learn
after round 1 (docs/feedback-loop.md).
``--init 50 --per-round 100 --eval 1500`` (the "small-slice" replay) starts from a
weaker router, so learning goes on for all five rounds, and scores every router on 3.3x as many
evaluation prompts.
Writes ``bench_feedback.json`` and ``bench_feedback.png``.
Cheap on CPU: the encoder is frozen (heads only, ``--freeze-layers -1``) and its activations are
computed once per prompt and shared by all routers (``ActivationCache``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path


import numpy as np

from neural_router.cli_options import add_model_options, given_options
from neural_router.training.config import UpdateConfig

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_feedback")
EXPLORING = ("ips", "ips_thompson", "explore_noweight")  # the methods that log propensities < 1
METHODS = ("static", "naive", "ips", "ips_thompson", "explore_noweight", "full")
UPDATE_OPTIONS = ("clip", "promote_on", "head_refit", "interpolate", "bias_calibration", "head_transfer",
                  "max_shift", "reward_calibration", "soup")   # run_update settings a replay passes on


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "routerbench"))
    ap.add_argument("--pool", default=str(REPO / "configs" / "models.yaml"))
    ap.add_argument("--out", default="runs/bench_feedback")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=300)
    ap.add_argument("--init", type=int, default=150, help="labeled prompts for the initial router")
    ap.add_argument("--eval", type=int, default=450, help="prompts in the fixed evaluation split")
    ap.add_argument("--cost-weight", type=float, default=0.3)
    ap.add_argument("--exploration", choices=["epsilon_greedy", "thompson"], default="epsilon_greedy")
    ap.add_argument("--epsilon", type=float, default=0.2)
    ap.add_argument("--thompson-n", type=float, default=20.0, help="Thompson pseudo count")
    ap.add_argument("--thompson-evidence", type=float, default=None, metavar="K",
                    help="Thompson strength per model from the serving router's evidence, "
                         "max(2, n * e / (e + K)) (ExplorationConfig.thompson_evidence_half)")
    ap.add_argument("--no-boost", action="store_true",
                    help="cold start without the boost branch: the new model gets traffic only through "
                         "exploration itself (e.g. evidence-scaled Thompson draws)")
    ap.add_argument("--margin", type=float, default=None,
                    help="explore only among models within this utility of the greedy choice")
    ap.add_argument("--gate", action="store_true",
                    help="exploring methods adopt a new router only when run_update's off-policy check "
                         "promotes it (safe promotion, as in production); naive and full always adopt")
    ap.add_argument("--lineage", action="store_true",
                    help="with --gate: the next update fine-tunes the last candidate even when it was not "
                         "promoted (run_update compare_with= the serving router), so a missed improvement "
                         "is delayed rather than lost")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--log-val", type=float, default=UpdateConfig.model_fields["log_val_fraction"].default,
                    metavar="F", help="share of the logs kept for early stopping (run_update log_val_fraction)")
    ap.add_argument("--freeze-layers", type=int, default=-1)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--holdout", type=float, default=0.25, help="share of logs held out for promotion")
    ap.add_argument("--n-boot", type=int, default=500)
    ap.add_argument("--ablation", action="store_true", help="also run exploration without weights")
    ap.add_argument("--methods", help="comma-separated subset of static,naive,ips,ips_thompson,"
                                      "explore_noweight,full (default: static,naive,ips,full; --ablation "
                                      "adds explore_noweight)")
    ap.add_argument("--raw-weights", action="store_true",
                    help="raw clipped 1/propensity weights instead of self-normalised ones (run_update "
                         "normalize_weights=False)")
    ap.add_argument("--refit-naive", action="store_true",
                    help="naive retraining updates with --head-refit too (an ablation: is it the refit alone?)")
    ap.add_argument("--interpolate-all", action="store_true",
                    help="apply --interpolate to naive and full too (an ablation: is it the interpolation alone?)")
    ap.add_argument("--pessimism", type=float, default=None, metavar="K",
                    help="the exploring methods route (and are scored) on quality lowered by K standard "
                         "errors of their router's evidence per model (neural_router.policy."
                         "pessimistic_quality); off by default")
    ap.add_argument("--init-bias", action="store_true",
                    help="the initial router starts each model's quality bias at its mean training score "
                         "(TrainConfig.init_quality_bias) instead of p = 0.5: on the small slice the initial "
                         "router's few optimizer steps otherwise leave every model's predictions well below "
                         "its scores, and the rounds then largely recalibrate")
    ap.add_argument("--keep-weights", action="store_true",
                    help="keep every router's weights (by default those no method serves or fine-tunes from "
                         "any more are deleted to save disk), so that candidates can be re-judged afterwards "
                         "(benchmarks/gate_rejudge.py)")
    ap.add_argument("--new-model", help="cold-start scenario: this model joins the pool after round 1 "
                                        "(left out of the initial slice and router)")
    g = ap.add_argument_group("update settings (neural-router update's options and defaults; clip and "
                              "promote_on apply to every method, the others to the exploring methods)")
    add_model_options(g, UpdateConfig, only=UPDATE_OPTIONS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", help="comma-separated seeds: one replay each (own split, initial router and "
                                    "exploration draws) under OUT/seed<k>, plus mean/sd over seeds")
    return ap.parse_args(argv)


# --------------------------------------------------------------------------------------------------
# data


def load_data(path: str, pool):
    from neural_router.data.dataset import load_routing_data

    ds = load_routing_data([path], pool)
    complete = np.isfinite(ds.scores).all(1) & np.isfinite(ds.cost_usd).all(1)
    return ds.subset(complete)


def write_long(ds, path: Path, skip: tuple[str, ...] = ()) -> Path:
    """A RoutingDataset slice as a long-format JSONL file (what run_train and run_update read),
    without the outcomes of the models in ``skip``."""
    with path.open("w", encoding="utf-8") as f:
        for i, p in enumerate(ds.prompts):
            for j, m in enumerate(ds.models):
                if m in skip:
                    continue
                f.write(json.dumps({"prompt": p, "model": m, "score": float(ds.scores[i, j]),
                                    "cost_usd": float(ds.cost_usd[i, j]),
                                    "output_tokens": None if not np.isfinite(ds.output_tokens[i, j])
                                    else float(ds.output_tokens[i, j]),
                                    "source": ds.sources[i], "id": ds.ids[i]}) + "\n")
    return path


def true_utility(ds, cost_weight: float) -> np.ndarray:
    """[N, M] utility of each model's real outcome: score - cw * cost / max cost of the prompt."""
    return ds.scores - cost_weight * ds.cost_usd / ds.cost_usd.max(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------------
# scoring a router on the evaluation split


class Evaluator:
    def __init__(self, ds, pool, prefs, cache):
        from neural_router.evaluation import metrics as M

        self.ds, self.pool, self.prefs, self.cache, self.M = ds, pool, prefs, cache, M
        self.u = true_utility(ds, prefs.cost_weight)
        self.lambdas = M.lambda_grid(ds.cost_usd, n=80)

    def __call__(self, router_dir: Path, pessimism: float | None = None) -> dict:
        from neural_router.training.update.promotion import policy_probs

        model, tok, cfg = load_router(router_dir)
        raw = predict(model, tok, self.pool, self.ds.prompts, cfg, self.cache)
        pred = pessimistic(raw, router_dir, pessimism)
        # the models this router can route to (all of them, except before a new model joined)
        known = [j for j, m in enumerate(self.ds.models) if m in pred.models]
        cols = [pred.models.index(self.ds.models[j]) for j in known]
        n = len(self.ds)
        w = (np.ones(n), np.full(n, self.prefs.cost_weight), np.zeros(n))
        choice = policy_probs(pred, self.ds.models, self.pool, w).argmax(1)
        rows = np.arange(n)
        scores, costs = self.ds.scores[:, known], self.ds.cost_usd[:, known]
        lambdas = self.lambdas if len(known) == len(self.ds.models) else self.M.lambda_grid(costs, n=80)
        rep = self.M.router_report("r", scores, costs, pred.quality[:, cols], pred.cost_usd[:, cols], lambdas)
        brier = float(np.mean((raw.quality[:, cols] - scores) ** 2))
        return {"utility": float(self.u[rows, choice].mean()),
                "quality": float(self.ds.scores[rows, choice].mean()),
                "cost": float(self.ds.cost_usd[rows, choice].mean()), "aiq": float(rep["aiq"]),
                "brier": brier,
                "choices": {m: int((choice == j).sum()) for j, m in enumerate(self.ds.models) if (choice == j).any()}}


def pessimistic(pred, router_dir: Path, penalty: float | None):
    """``pred`` with its qualities lowered by ``penalty`` standard errors of the router's evidence per
    model (:func:`neural_router.policy.pessimistic_quality`); unchanged when ``penalty`` is None/0."""
    from neural_router.policy.exploration import read_evidence
    from neural_router.policy.routing import pessimistic_quality

    if not penalty:
        return pred
    evidence = read_evidence(router_dir)
    e = np.array([evidence.get(m, 0) for m in pred.models], dtype=np.float64)
    return replace(pred, quality=pessimistic_quality(pred.quality, e, penalty))


def load_router(router_dir: Path):
    from transformers import AutoTokenizer

    from neural_router.modeling.model import RouterModel
    from neural_router.training.config import TrainConfig

    tm = json.loads((router_dir / "training_metrics.json").read_text())
    return (RouterModel.from_pretrained(router_dir), AutoTokenizer.from_pretrained(str(router_dir)),
            TrainConfig.model_validate(tm["config"]))


def predict(model, tok, pool, prompts, cfg, cache):
    from neural_router.training.activation_cache import predict_router

    return predict_router(model, tok, pool, prompts, cfg, cache)


# --------------------------------------------------------------------------------------------------
# serving one round


def serve_round(method: str, router_dir: Path, traffic, idx: np.ndarray, rnd: int, store, pool, prefs,
                expl_cfg, rng, cache, pessimism: float | None = None) -> dict:
    """Route traffic[idx] with the method's router, log decisions and the revealed outcomes
    (``store=None``: only measure what was served). With ``pessimism`` the policy routes on the
    pessimistic qualities; the log keeps the router's own predictions."""
    from neural_router.policy.exploration import explore, read_evidence
    from neural_router.policy.routing import Capabilities, Constraints, route
    from neural_router.inference.interface import RequestFeatures

    model, tok, cfg = load_router(router_dir)
    if expl_cfg.kind == "thompson" and expl_cfg.thompson_evidence_half is not None:
        expl_cfg = replace(expl_cfg, evidence=read_evidence(router_dir))
    prompts = [traffic.prompts[i] for i in idx]
    pred = predict(model, tok, pool, prompts, cfg, cache)
    q_route = pessimistic(pred, router_dir, pessimism).quality
    models = pred.models
    caps = Capabilities.from_pool(pool.subset(models))
    col = [traffic.models.index(m) for m in models]
    u_true = true_utility(traffic, prefs.cost_weight)
    served_u, explored = [], 0
    for k, i in enumerate(idx):
        q, c, lat = q_route[k], pred.cost_usd[k], pred.latency_ms[k]
        dec = route(models, q, c, lat, prefs, Constraints(), caps, RequestFeatures(), int(pred.input_tokens[k]))
        ex = explore(dec, models, q, c, lat, prefs, expl_cfg, rng)
        rid = f"{method}-r{rnd}-{i}"
        j = col[models.index(ex.model)]
        served_u.append(u_true[i, j])
        explored += ex.explored
        if store is None:
            continue
        store.log_decision(request_id=rid, prompt=prompts[k], model=ex.model, predictions=pred.row(k),
                           router_version=model.config.version, propensity=ex.propensity,
                           preferences=asdict(prefs), exploration=ex.policy,
                           input_tokens=int(pred.input_tokens[k]))
        reveal = range(len(models)) if method == "full" else [models.index(ex.model)]
        for jj in reveal:
            t = col[jj]
            store.add_feedback(rid, float(traffic.scores[i, t]), model=models[jj],
                               cost_usd=float(traffic.cost_usd[i, t]),
                               output_tokens=None if not np.isfinite(traffic.output_tokens[i, t])
                               else int(traffic.output_tokens[i, t]))
    return {"served_utility": float(np.mean(served_u)), "explored_share": explored / len(idx)}


# --------------------------------------------------------------------------------------------------


def plot(results: dict, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    for k, (key, label) in enumerate((("utility", "eval utility (true outcomes)"), ("aiq", "eval AIQ"),
                                      ("served_utility", "utility served during the round"))):
        ax = fig.add_subplot(1, 3, k + 1)
        for i, (method, rows) in enumerate(results.items()):
            xs = [r["round"] for r in rows if r.get(key) is not None]
            ys = [r[key] for r in rows if r.get(key) is not None]
            ax.plot(xs, ys, "o-", color=f"C{i}", label=method)
        ax.set_xlabel("round (updates so far)" if key != "served_utility" else "round served")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    if not args.seeds:
        return run(args)
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    base_out = Path(args.out)
    reports = []
    for seed in seeds:
        log.info("===== seed %d =====", seed)
        reports.append(run(argparse.Namespace(**{**vars(args), "seed": seed, "seeds": None,
                                                 "out": str(base_out / f"seed{seed}")})))
    return aggregate(reports, seeds, base_out)


def aggregate(reports: list[dict], seeds: list[int], out: Path) -> dict:
    """Mean and standard deviation over seeds (each seed: its own data split, initial router,
    exploration draws) of every method's per-round eval utility and AIQ."""
    methods = list(reports[0]["results"])
    rounds = len(reports[0]["results"][methods[0]])
    agg: dict = {"seeds": seeds, "methods": {}}
    import warnings

    warnings.simplefilter("ignore", RuntimeWarning)   # all-NaN columns (nothing served after the last round)
    for m in methods:
        agg["methods"][m] = {}
        for key in ("utility", "aiq", "served_utility"):
            vals = np.array([[r["results"][m][k].get(key, np.nan) if r["results"][m][k].get(key) is not None
                              else np.nan for k in range(rounds)] for r in reports], dtype=float)
            agg["methods"][m][key] = {"mean": np.nanmean(vals, 0).tolist() if np.isfinite(vals).any() else None,
                                      "sd": np.nanstd(vals, 0, ddof=1).tolist() if len(seeds) > 1 and
                                      np.isfinite(vals).any() else None,
                                      "per_seed": vals.tolist()}
    fin = {m: np.array([r["results"][m][-1]["utility"] for r in reports]) for m in methods}
    if {"static", "full"} <= set(fin):
        gap = fin["full"] - fin["static"]
        agg["closed_share_of_mean_gap"] = {m: float((fin[m] - fin["static"]).mean() / gap.mean())
                                           if gap.mean() > 0 else None for m in methods}
    if {"ips", "naive"} <= set(fin):
        agg["ips_beats_naive_seeds"] = int((fin["ips"] > fin["naive"]).sum())
        agg["ips_minus_naive"] = {"mean": float((fin["ips"] - fin["naive"]).mean()),
                                  "sd": float((fin["ips"] - fin["naive"]).std(ddof=1)) if len(seeds) > 1 else None}
    promos = {m: [(x["promote"], x["truly_better"]) for r in reports for x in r["results"][m][1:]]
              for m in methods if m != "static"}
    agg["false_promotions"] = {m: sum(p and not t for p, t in v) for m, v in promos.items()}
    agg["missed_improvements"] = {m: sum(t and not p for p, t in v) for m, v in promos.items()}
    agg["updates"] = {m: len(v) for m, v in promos.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_feedback_seeds.json").write_text(json.dumps(agg, indent=2, default=float))
    mean_results = {m: [{"round": k, **{key: (agg["methods"][m][key]["mean"] or [None] * rounds)[k]
                                       for key in ("utility", "aiq", "served_utility")}}
                        for k in range(rounds)] for m in methods}
    plot(mean_results, out / "bench_feedback_seeds.png", f"mean over seeds {seeds}")
    print(f"\nmean (sd) over seeds {seeds}: eval utility per round")
    for m in methods:
        u = agg["methods"][m]["utility"]
        sd = u["sd"] or [0.0] * rounds
        print(f"  {m:>16}: " + "  ".join(f"{a:.4f}({b:.3f})" for a, b in zip(u["mean"], sd)))
    print("  AIQ:")
    for m in methods:
        a = agg["methods"][m]["aiq"]
        sd = a["sd"] or [0.0] * rounds
        print(f"  {m:>16}: " + "  ".join(f"{x:.4f}({y:.3f})" for x, y in zip(a["mean"], sd)))
    print(json.dumps({k: v for k, v in agg.items() if k not in ("methods",)}, indent=2, default=float))
    return agg


RUN_MARKER = ".bench_feedback_run"   # in every folder a replay writes: only such a folder is ever replaced


def fresh_run_folder(out: Path) -> Path:
    """``out``, empty: a previous replay's folder there is replaced; any other non-empty folder (or a
    file) is an error, so a mistyped ``--out`` never deletes someone's files."""
    if out.exists():
        if not out.is_dir() or (any(out.iterdir()) and not (out / RUN_MARKER).is_file()):
            raise SystemExit(f"--out {out} exists and is not a previous replay's folder (no {RUN_MARKER}); "
                             "choose a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / RUN_MARKER).write_text("written by benchmarks/bench_feedback.py; the next replay here replaces it\n")
    return out


def replay_methods(args) -> list[str]:
    """The methods to replay (``static`` always first); SystemExit for contradictory arguments."""
    if args.lineage and not args.gate:
        raise SystemExit("--lineage only changes gated runs: add --gate")
    if args.refit_naive and base_settings(args).head_refit is None:
        raise SystemExit("--refit-naive gives naive retraining the head refit, which --head-refit off turns off")
    methods = ["static", "naive", "ips"] + (["explore_noweight"] if args.ablation else []) + ["full"]
    if args.methods:
        methods = ["static"] + [m for m in args.methods.split(",") if m and m != "static"]
        unknown = set(methods) - set(METHODS)
        if unknown:
            raise SystemExit(f"unknown methods: {', '.join(sorted(unknown))}")
    return methods


def base_settings(args) -> UpdateConfig:
    """The update settings every method starts from: neural-router update's defaults with the
    replay's options (``--holdout``, ``--n-boot``, ``--log-val``, ``--raw-weights``, the update
    group) and its fixed preferences (``--cost-weight``)."""
    return UpdateConfig(**given_options(args, UpdateConfig, UPDATE_OPTIONS), holdout_fraction=args.holdout,
                        n_boot=args.n_boot, log_val_fraction=args.log_val, normalize_weights=not args.raw_weights,
                        quality_weight=1.0, cost_weight=args.cost_weight, latency_weight=0.0)


def method_settings(m: str, args, rnd: int, new: tuple[str, ...], pool_file: Path | None) -> UpdateConfig:
    """The settings of method ``m``'s update in round ``rnd``: the exploring methods use the update
    options as given; naive and full retrain without the head refit (``--refit-naive``: naive with
    it), head transfer, bias calibration, trust region or soup, and keep all of each change
    (``--interpolate-all``: the given share); naive and explore_noweight use no importance weights."""
    base = base_settings(args)
    exploring = m in EXPLORING
    return base.model_copy(update={
        "seed": rnd, "pool_file": pool_file, "importance_weighting": m not in ("naive", "explore_noweight"),
        "interpolate": base.interpolate if exploring or args.interpolate_all else 1.0,
        "bias_calibration": base.bias_calibration if exploring else None,
        "head_transfer": base.head_transfer if exploring else None,
        "head_transfer_models": new if base.head_transfer and exploring else None,
        "max_shift": base.max_shift if exploring else None,
        "soup": base.soup if exploring else None,
        "head_refit": base.head_refit if exploring or (m == "naive" and args.refit_naive) else None})


@dataclass
class Replay:
    """One seed's replay: its splits, initial router and shared state."""

    args: argparse.Namespace
    out: Path
    pool: object
    ev: object
    init: object
    traffic: object
    new: tuple[str, ...]
    prefs: object
    r0: Path
    cache: object
    evaluate: object
    t0: float


def prepare_replay(args) -> Replay:
    """Split the data (evaluation, initial slice, traffic), write the run folder and train the
    initial router. The run folder is touched only once every argument is checked."""
    import torch

    from neural_router.policy.routing import Preferences
    from neural_router.pool import ModelPool
    from neural_router.training.activation_cache import ActivationCache
    from neural_router.training.train import run_train

    t0 = time.time()
    torch.manual_seed(args.seed)
    pool = ModelPool.from_yaml(args.pool)
    ds = load_data(args.data, pool)
    pool = pool.subset(ds.models)
    order = np.random.default_rng(args.seed).permutation(len(ds))
    need = args.eval + args.init + args.rounds * args.per_round
    if need > len(ds):
        raise SystemExit(f"need {need} prompts, the data has {len(ds)} complete ones")
    new = (args.new_model,) if args.new_model else ()
    if args.new_model and args.new_model not in ds.models:
        raise SystemExit(f"--new-model {args.new_model!r} is not in the data's models: {', '.join(ds.models)}")
    out = fresh_run_folder(Path(args.out).resolve())   # only once every argument is checked
    pool.to_yaml(out / "pool.yaml")
    ev, init = ds.subset(order[: args.eval]), ds.subset(order[args.eval: args.eval + args.init])
    traffic = ds.subset(order[args.eval + args.init: need])
    init_file = write_long(init, out / "init.jsonl", skip=new)
    init_pool = out / "pool.yaml"
    if new:
        init_pool = out / "pool_initial.yaml"
        pool.subset([m for m in ds.models if m not in new]).to_yaml(init_pool)
    prefs = Preferences(cost_weight=args.cost_weight)
    cfg_file = out / "train.yaml"   # every key the replay sets; all layers, no time budget
    cfg_file.write_text(json.dumps({"max_length": args.max_length, "head_tokens": 16, "encoder_layers": None,
                                    "freeze_layers": args.freeze_layers, "epochs": args.epochs,
                                    "patience": 2, "seed": args.seed, "data": {"val_fraction": 0.2},
                                    "init_quality_bias": args.init_bias, "max_minutes": None}))
    log.info("data: %d eval, %d initial, %d traffic prompts, %d models", len(ev), len(init), len(traffic),
             len(ds.models))
    r0 = run_train([str(init_file)], out / "r0", cfg_file, init_pool, progress=False)
    log.info("initial router trained (%.1f min)", (time.time() - t0) / 60)
    cache = ActivationCache()
    return Replay(args, out, pool, ev, init, traffic, new, prefs, r0, cache, Evaluator(ev, pool, prefs, cache), t0)


def exploration_configs(args, new: tuple[str, ...]) -> dict[str, object]:
    """The exploration policy of each kind of method: thompson, explore (``--exploration``), greedy."""
    from neural_router.policy.exploration import ExplorationConfig

    boost = () if args.no_boost else new
    thompson = ExplorationConfig(kind="thompson", thompson_pseudo_count=args.thompson_n, boost_models=boost,
                                 thompson_evidence_half=args.thompson_evidence)
    explore = (ExplorationConfig(kind="epsilon_greedy", epsilon=args.epsilon, margin=args.margin, boost_models=boost)
               if args.exploration == "epsilon_greedy" else replace(thompson, margin=args.margin))
    return {"thompson": thompson, "explore": explore, "greedy": ExplorationConfig(kind="none")}


def update_round(m: str, rnd: int, rp: Replay, store, state: dict, prev: dict, served: dict) -> dict:
    """Method ``m``'s update after round ``rnd``: run_update on its logs, the new router scored on
    the evaluation split, adopted (or not, when gated) into ``state`` (current / lineage routers).
    Returns the round's row of results."""
    from neural_router.training.update import run_update
    from neural_router.training.update.promotion import promotion_verdict

    args, t1 = rp.args, time.time()
    uc = method_settings(m, args, rnd, rp.new, (rp.out / "pool.yaml") if rp.new else None)
    res = run_update(state["lineage"][m], store, rp.out / m, uc.model_copy(update={"compare_with": state["current"][m]}),
                     activation_cache=rp.cache)
    new_dir = Path(res["router_dir"])
    score = rp.evaluate(new_dir, args.pessimism if m in EXPLORING else None)
    pr = res["promotion"]
    diff = pr.get("difference", {})  # absent when there were no held-out logs
    gated = args.gate and m in EXPLORING
    adopt = res["promote"] or not gated
    row = {"round": rnd, **(score if adopt else {k: prev[k] for k in score}),
           "router": (new_dir if adopt else state["current"][m]).name,
           "candidate_utility": score["utility"], "adopted": adopt, "promote": res["promote"],
           "promote_ci": promotion_verdict(pr, 0.0, require_ci=True, promote_on=uc.promote_on)[0],
           "truly_better": score["utility"] > prev["utility"],
           **{f"{e}_diff": diff.get(e, {}).get("value") for e in ("ips", "snips", "dr", "dm")},
           "dr_diff_ci": [diff.get("dr", {}).get("ci_low"), diff.get("dr", {}).get("ci_high")],
           "n_holdout": res["n_holdout"], "n_logged_train": res["n_logged_train"],
           "epochs": len(res["history"]), "trust_region": res["trust_region"],
           "update_minutes": (time.time() - t1) / 60}
    old_dirs = {state["current"][m], state["lineage"][m]}
    if adopt:
        state["current"][m] = new_dir
    state["lineage"][m] = new_dir if (adopt or (gated and args.lineage)) else state["current"][m]
    for d in old_dirs | {new_dir}:
        if d not in (state["current"][m], state["lineage"][m], rp.r0) and not args.keep_weights:
            _drop_weights(d)
    log.info("round %d %-16s utility %.4f AIQ %.4f (served %.4f) promote=%s truly better=%s%s [%.1f min]",
             rnd, m, score["utility"], score["aiq"], served["served_utility"], res["promote"],
             score["utility"] > prev["utility"], "" if adopt else " (not adopted)", (time.time() - t1) / 60)
    return row


def replay_rounds(rp: Replay, methods: list[str], base: dict) -> dict[str, list[dict]]:
    """Every round: each method serves the round's traffic (logging decisions and revealed outcomes)
    and updates its router. Returns each method's rows, round 0 first."""
    from neural_router.feedback.store import FeedbackStore

    args, ecfg = rp.args, exploration_configs(rp.args, rp.new)
    results = {m: [{"round": 0, **base}] for m in methods}
    state = {"current": {m: rp.r0 for m in methods}, "lineage": {m: rp.r0 for m in methods}}
    stores = {m: FeedbackStore.from_url(rp.out / "feedback" / f"{m}.db") for m in methods if m != "static"}
    # one exploration stream per method, independent of which other methods run
    rngs = {m: np.random.default_rng([args.seed, zlib.crc32(m.encode())]) for m in methods}
    for rnd in range(1, args.rounds + 1):
        idx = np.arange((rnd - 1) * args.per_round, rnd * args.per_round)
        for m in methods:
            if m == "static":
                served = serve_round(m, rp.r0, rp.traffic, idx, rnd, None, rp.pool, rp.prefs, ecfg["greedy"],
                                     rngs[m], rp.cache)
                results[m][-1]["served_utility"] = served["served_utility"]
                results[m].append({"round": rnd, **base})
                continue
            kind = "thompson" if m == "ips_thompson" else "explore" if m in ("ips", "explore_noweight") else "greedy"
            served = serve_round(m, state["current"][m], rp.traffic, idx, rnd, stores[m], rp.pool, rp.prefs,
                                 ecfg[kind], rngs[m], rp.cache, pessimism=args.pessimism if m in EXPLORING else None)
            results[m][-1].update(served_utility=served["served_utility"], explored_share=served["explored_share"])
            results[m].append(update_round(m, rnd, rp, stores[m], state, results[m][-1], served))
    for s in stores.values():
        s.close()
    return results


def summarize(results: dict, rp: Replay, methods: list[str]) -> dict:
    """Final utilities and AIQ, the share of the full-information gap each method closed, and how
    often the promotion check agreed with the truth."""
    final = {m: rows[-1] for m, rows in results.items()}
    gap = final["full"]["utility"] - final["static"]["utility"] if "full" in final else None
    updated = {m: rows[1:] for m, rows in results.items() if m != "static"}
    return {
        "final_utility": {m: r["utility"] for m, r in final.items()},
        "final_aiq": {m: r["aiq"] for m, r in final.items()},
        "gap_full_minus_static": gap,
        "closed_share": {m: (final[m]["utility"] - final["static"]["utility"]) / gap
                         if gap is not None and gap > 0 else None for m in methods},
        "ips_beats_naive": (final["ips"]["utility"] > final["naive"]["utility"]
                            if {"ips", "naive"} <= set(final) else None),
        "ips_monotone": (all(b["utility"] >= a["utility"] - 1e-9 for a, b in zip(results["ips"], results["ips"][1:]))
                         if "ips" in results else None),
        "promotion_agreement": {m: float(np.mean([r["promote"] == r["truly_better"] for r in rows]))
                                for m, rows in updated.items()},
        "promotion_agreement_require_ci": {m: float(np.mean([r["promote_ci"] == r["truly_better"] for r in rows]))
                                           for m, rows in updated.items()},
        "false_promotions": {m: sum(r["promote"] and not r["truly_better"] for r in rows)
                             for m, rows in updated.items()},
        "false_promotions_require_ci": {m: sum(r["promote_ci"] and not r["truly_better"] for r in rows)
                                        for m, rows in updated.items()},
        "new_model": rp.args.new_model,
        "new_model_eval_choices": ({m: rows[-1]["choices"].get(rp.args.new_model, 0) for m, rows in results.items()}
                                   if rp.args.new_model else None),
        "oracle_utility": float(rp.evaluate.u.max(1).mean()),
        "best_single_utility": float(rp.evaluate.u.mean(0).max()),
        "best_single_model": rp.ev.models[int(rp.evaluate.u.mean(0).argmax())],
        "minutes": (time.time() - rp.t0) / 60,
        "cache": {"prompts": len(rp.cache), "hits": rp.cache.hits, "misses": rp.cache.misses}}


def run(args) -> dict:
    """One replay (one seed): bench_feedback.json, bench_feedback.png and a table."""
    from transformers import logging as hf_logging

    hf_logging.set_verbosity_error()
    methods = replay_methods(args)
    rp = prepare_replay(args)
    base = rp.evaluate(rp.r0)
    log.info("round 0: utility %.4f, AIQ %.4f", base["utility"], base["aiq"])
    results = replay_rounds(rp, methods, base)
    summary = summarize(results, rp, methods)
    report = {"args": vars(args), "update_settings": base_settings(args).model_dump(mode="json"),
              "command": " ".join(sys.argv), "results": results, "summary": summary,
              "n": {"eval": len(rp.ev), "init": len(rp.init), "traffic": len(rp.traffic)}}
    (rp.out / "bench_feedback.json").write_text(json.dumps(report, indent=2, default=float))
    plot(results, rp.out / "bench_feedback.png",
         f"RouterBench replay: {args.rounds} rounds x {args.per_round} prompts, cost_weight {args.cost_weight}, "
         f"{exploration_configs(args, rp.new)['explore'].name} for ips" + (", raw weights" if args.raw_weights else "")
         + (f", {args.new_model} joins after round 1" if args.new_model else ""))
    print_table(results, summary)
    return report


def _drop_weights(router_dir: Path) -> None:
    """Older routers are not needed again: drop their weights to save disk (configs stay)."""
    (router_dir / "model.safetensors").unlink(missing_ok=True)


def print_table(results: dict, summary: dict) -> None:
    methods = list(results)
    rounds = len(results[methods[0]])
    head = f"{'round':>5} | " + " | ".join(f"{m:>22}" for m in methods)
    print("\neval utility / AIQ per round (true outcomes on the evaluation split)")
    print(head)
    print("-" * len(head))
    for r in range(rounds):
        print(f"{r:>5} | " + " | ".join(f"{results[m][r]['utility']:>8.4f} / {results[m][r]['aiq']:.4f}  "
                                         .rjust(22) for m in methods))
    print("\nutility served during each round (includes the price of exploration)")
    for m in methods:
        vals = [r.get("served_utility") for r in results[m][:-1]]
        print(f"  {m:>16}: " + " ".join("   -   " if v is None else f"{v:.4f}" for v in vals))
    print("\nsummary:", json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()
