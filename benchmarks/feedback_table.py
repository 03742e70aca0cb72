"""Check a bench_feedback replay against issue 4's target, from its ``bench_feedback_seeds.json``.

The target: our method improves round over round, beats naive retraining, and closes at least half of
the gap to the full-information router within 5 rounds. For each run this prints the mean eval utility
after each update, whether the mean curve (and each seed's) rises every round, the share of the
round-5 gap closed, and our method minus naive retraining at round 5 per seed (mean, sd, standard
error, seeds ahead, two-sided sign-test p).

A gated run (``--methods ips --gate``) holds only our method; ``NAME=RUN:BASELINES`` takes the
no-update, naive and full-information rows from an ungated run that covers the same seeds.
``RUN_A+RUN_B`` (on either side) pools runs made on different seeds. ``--full-from FILE#ROW`` takes
the full-information curve from an earlier row when the baselines lack it. ``--pool NAME=FILE#ROW+FILE#ROW``
pools rows this script wrote earlier (its ``--output`` JSON) when the runs themselves are gone: the
means, the share of the gap and the per-seed spread of ours − naive are pooled exactly from the rows'
summaries (the sign test assumes no tied seeds).

    python benchmarks/feedback_table.py runs/bf_small20 \
        "gated=runs/bf_small_gate:runs/bf_small20" --output benchmarks/results/bench_feedback_small.json
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np


def load(run: str) -> dict:
    """One run's ``bench_feedback_seeds.json``; ``RUN_A+RUN_B`` pools runs on different seeds."""
    if "+" in run:
        parts = [load(r) for r in run.split("+")]
        seeds = [s for p in parts for s in p["seeds"]]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"{run}: the pooled runs share seeds ({seeds}); pool runs on different seeds")
        common = set.intersection(*(set(p["methods"]) for p in parts))
        counts = {k: {m: sum(p.get(k, {}).get(m) or 0 for p in parts) for m in common}
                  for k in ("false_promotions", "missed_improvements", "updates")}
        return {"seeds": seeds, **counts,
                "methods": {m: {"utility": {"per_seed": [row for p in parts
                                                         for row in p["methods"][m]["utility"]["per_seed"]]}}
                            for m in common}}
    path = Path(run) / "bench_feedback_seeds.json"
    if not path.exists():
        raise SystemExit(f"{path}: not found; run benchmarks/bench_feedback.py --seeds ... --out {run} first")
    return json.loads(path.read_text())


def only_seeds(agg: dict, seeds: list[int], run: str) -> dict:
    """``agg`` restricted to ``seeds`` (promotion counts are per run, so they are dropped)."""
    missing = sorted(set(seeds) - set(agg["seeds"]))
    if missing:
        raise SystemExit(f"{run} has no seeds {missing} (it has {agg['seeds']})")
    pick = [agg["seeds"].index(s) for s in seeds]
    return {"seeds": list(seeds), "methods": {m: {"utility": {"per_seed": [v["utility"]["per_seed"][i] for i in pick]}}
                                               for m, v in agg["methods"].items()}}


def per_seed(agg: dict, method: str, run: str) -> np.ndarray:
    if method not in agg["methods"]:
        raise SystemExit(f"{run}: no method {method!r} (has {sorted(agg['methods'])}); "
                         "pass an ungated run with static,naive,full as the baselines (NAME=RUN:BASELINES)")
    return np.asarray(agg["methods"][method]["utility"]["per_seed"], dtype=float)


def sign_test(wins: int, n: int) -> float:
    """Two-sided exact binomial test of ``wins`` out of ``n`` against 1/2 (1 when ``n`` is 0)."""
    k = min(wins, n - wins)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def read_row(spec: str) -> dict:
    """``FILE#ROW``: one row of an earlier ``--output`` file."""
    file, _, row = spec.partition("#")
    table = json.loads(Path(file).read_text())
    if row not in table:
        raise SystemExit(f"{file} has no row {row!r} (it has {', '.join(map(repr, table))})")
    return table[row]


def summarise(run: str, baselines: str | None, method: str, seeds: list[int] | None = None,
              full_from: dict | None = None) -> dict:
    agg = load(run) if seeds is None else only_seeds(load(run), seeds, run)
    base = load(baselines) if baselines else agg
    if full_from is not None:   # the full-information curve's means, from a row on the same seeds
        if sorted(full_from["seeds"]) != sorted(agg["seeds"]):
            raise SystemExit(f"--full-from covers seeds {full_from['seeds']}, {run} has {agg['seeds']}: "
                             "take it from a row on the same seeds")
        full = np.r_[np.nan, full_from["mean_utility"]["full"]].tolist()   # round 0 is never read
        base = {**base, "methods": {**base["methods"],
                                    "full": {"utility": {"per_seed": [full] * len(base["seeds"])}}}}
    missing = sorted(set(agg["seeds"]) - set(base["seeds"]))
    if missing:
        raise SystemExit(f"{run} has seeds {missing} that {baselines} lacks (it has {base['seeds']}): "
                         "the baselines must cover the same seeds")
    ours = per_seed(agg, method, run)
    pick = [base["seeds"].index(s) for s in agg["seeds"]]     # the baselines' rows for the run's seeds
    rows = {m: per_seed(base, m, baselines or run)[pick] for m in ("static", "naive", "full")}
    curve = ours[:, 1:]                                    # eval utility after updates 1..5
    mean = curve.mean(0)
    gap = rows["full"][:, -1] - rows["static"][:, -1]
    diff = ours[:, -1] - rows["naive"][:, -1]
    n = len(diff)
    sd = float(diff.std(ddof=1)) if n > 1 else None     # one seed: no spread to report
    wins = int((diff > 0).sum())
    return {
        "run": run, "baselines": baselines or run, "method": method, "seeds": agg["seeds"],
        "mean_utility": {"static": float(rows["static"][:, -1].mean()),
                         "naive": rows["naive"][:, 1:].mean(0).tolist(),
                         "ours": mean.tolist(), "full": rows["full"][:, 1:].mean(0).tolist()},
        "mean_rises_every_round": bool(np.all(np.diff(np.r_[rows["static"][:, -1].mean(), mean]) > 0)),
        "seeds_rising_every_round": int(np.all(np.diff(ours, axis=1) > 0, axis=1).sum()),
        "seeds_never_falling": int(np.all(np.diff(ours, axis=1) >= 0, axis=1).sum()),   # gated: level = kept
        "largest_seed_dip": float(max(0.0, -np.diff(ours, axis=1).min())),
        "share_of_gap": float((ours[:, -1] - rows["static"][:, -1]).mean() / gap.mean()),
        "naive_share_of_gap": float((rows["naive"][:, -1] - rows["static"][:, -1]).mean() / gap.mean()),
        "gap": float(gap.mean()),
        "ours_minus_naive": {"mean": float(diff.mean()), "sd": sd,
                             "se": None if sd is None else sd / math.sqrt(n), "seeds_ahead": wins, "seeds": n,
                             "sign_test_p": sign_test(wins, int((diff != 0).sum())),   # ties dropped
                             "by_round": (curve - rows["naive"][:, 1:]).mean(0).tolist()},
        "false_promotions": agg.get("false_promotions", {}).get(method),
        "missed_improvements": agg.get("missed_improvements", {}).get(method),
        "updates": agg.get("updates", {}).get(method),
    }


def pool_summaries(name: str, rows: list[dict]) -> dict:
    """One summary of several ``summarise`` rows on different seeds, pooled exactly from their fields."""
    seeds = [k for r in rows for k in r["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"{name}: the pooled rows share seeds; pool rows on different seeds")
    n = np.array([len(r["seeds"]) for r in rows], dtype=float)
    wmean = lambda xs: (np.asarray(xs, dtype=float) * n.reshape(-1, *[1] * (np.ndim(xs) - 1))).sum(0) / n.sum()  # noqa: E731
    mu = {k: wmean([r["mean_utility"][k] for r in rows]) for k in ("static", "naive", "ours", "full")}
    gap = wmean([r["gap"] for r in rows])
    d = [r["ours_minus_naive"] for r in rows]
    dm = wmean([x["mean"] for x in d])
    ss = sum((k - 1) * x["sd"] ** 2 + k * (x["mean"] - dm) ** 2 for k, x in zip(n, d))
    sd = math.sqrt(ss / (n.sum() - 1))
    wins = sum(x["seeds_ahead"] for x in d)
    return {
        "pooled": [f"{r['run']} (seeds {r['seeds'][0]}-{r['seeds'][-1]})" for r in rows], "method": rows[0]["method"],
        "seeds": seeds, "mean_utility": {k: (v.tolist() if v.ndim else float(v)) for k, v in mu.items()},
        "mean_rises_every_round": bool(np.all(np.diff(np.r_[mu["static"], mu["ours"]]) > 0)),
        "seeds_rising_every_round": sum(r["seeds_rising_every_round"] for r in rows),
        "seeds_never_falling": sum(r["seeds_never_falling"] for r in rows),
        "largest_seed_dip": max(r["largest_seed_dip"] for r in rows),
        "share_of_gap": float(wmean([r["share_of_gap"] * r["gap"] for r in rows]) / gap),
        "naive_share_of_gap": float(wmean([r["naive_share_of_gap"] * r["gap"] for r in rows]) / gap),
        "gap": float(gap),
        "ours_minus_naive": {"mean": float(dm), "sd": sd, "se": sd / math.sqrt(n.sum()), "seeds_ahead": wins,
                             "seeds": int(n.sum()), "sign_test_p": sign_test(wins, int(n.sum())),
                             "by_round": wmean([x["by_round"] for x in d]).tolist()},
        "false_promotions": None, "missed_improvements": None, "updates": None,
    }


def pooled_rows(spec: str) -> tuple[str, dict]:
    """``NAME=FILE#ROW+FILE#ROW`` -> (NAME, the pooled summary). NAME and ROW may contain '=' and
    '+' themselves: only those directly before a ``FILE.json#`` separate."""
    name, *parts = re.split(r"[=+](?=[^=+#]*\.json#)", spec)
    if not parts:
        raise SystemExit(f"--pool {spec!r}: expected NAME=FILE.json#ROW+FILE.json#ROW")
    return name, pool_summaries(name, [read_row(part) for part in parts])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="RUN, or NAME=RUN, or NAME=RUN:BASELINES (an ungated run on the same "
                                            "seeds with static,naive,full)")
    ap.add_argument("--method", default="ips", help="the row that is 'our method' (default ips)")
    ap.add_argument("--seeds", help="only these seeds of each run, e.g. 0-9 or 0,2,4")
    ap.add_argument("--pool", action="append", default=[], metavar="NAME=FILE#ROW+FILE#ROW",
                    help="pool rows of earlier --output files (runs on different seeds whose folders are gone)")
    ap.add_argument("--full-from", metavar="FILE#ROW",
                    help="when the baselines' full-information replays are gone: take that curve's means from a "
                         "row of an earlier --output file on the same seeds (each replay is deterministic per "
                         "seed); the share of the gap is then exact, the per-seed spread of full is not used")
    ap.add_argument("--output", help="write the summaries as JSON here")
    args = ap.parse_args(argv)
    seeds = None
    if args.seeds:
        seeds = [k for part in args.seeds.split(",") for a, _, b in [part.partition("-")]
                 for k in range(int(a), int(b or a) + 1)]
    if not args.runs and not args.pool:
        ap.error("give at least one RUN or --pool")
    if seeds is not None and args.pool:
        ap.error("--seeds applies to runs, not to --pool (a pooled row keeps all the seeds of its rows)")
    out = {}
    for spec in args.runs:
        name, _, rest = spec.rpartition("=")
        run, _, baselines = rest.partition(":")
        out[name or run] = summarise(run, baselines or None, args.method, seeds,
                                     read_row(args.full_from) if args.full_from else None)
    for spec in args.pool:
        name, pooled = pooled_rows(spec)
        out[name] = pooled
    for name, s in out.items():
        d = s["ours_minus_naive"]
        fmt = lambda xs: " ".join(f"{x:.4f}" for x in xs)  # noqa: E731
        print(f"\n{name}  ({len(s['seeds'])} seeds; no updates {s['mean_utility']['static']:.4f})")
        print(f"  naive  {fmt(s['mean_utility']['naive'])}")
        print(f"  ours   {fmt(s['mean_utility']['ours'])}   rises every round: {s['mean_rises_every_round']} "
              f"(per seed {s['seeds_rising_every_round']} of {d['seeds']}, never falling {s['seeds_never_falling']}; "
              f"largest dip {s['largest_seed_dip']:.3f})")
        print(f"  full   {fmt(s['mean_utility']['full'])}")
        print(f"  share of the gap {s['share_of_gap']:.0%} (naive {s['naive_share_of_gap']:.0%}; gap {s['gap']:.4f})")
        spread = f" sd {d['sd']:.4f} se {d['se']:.4f}" if d["sd"] is not None else ""
        print(f"  ours - naive at round 5: {d['mean']:+.4f}{spread}, ahead on "
              f"{d['seeds_ahead']} of {d['seeds']} (sign test p = {d['sign_test_p']:.2f}); by round "
              + " ".join(f"{x:+.4f}" for x in d["by_round"]))
        if s["updates"]:
            print(f"  promotions: {s['false_promotions']} false, {s['missed_improvements']} missed "
                  f"of {s['updates']} updates")
    if args.output:
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
