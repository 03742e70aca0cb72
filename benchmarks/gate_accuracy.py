"""How well does the safe-promotion check tell a better router from a worse one?

Reads replays written by ``benchmarks/bench_feedback.py --gate`` (one folder per seed, as
``--seeds`` writes them) and, for every candidate router an update produced, compares the off-policy
verdict of ``run_update`` (``promotion.json``: the doubly robust difference new - current on
held-out logs, and the same with the importance weights clipped, ``dr_difference_by_clip``) with the
truth the replay knows: the candidate's utility on the evaluation split minus the serving router's.

    python benchmarks/gate_accuracy.py runs/bf_gate_rowi runs/bf_cold_gate_rowi \\
        --output benchmarks/results/gate_accuracy.json

For each statistic it prints how often its sign agrees with the true sign, how many candidates it
would promote, how many of those were not really better (false promotions) and how many real
improvements it would miss, the true gain summed over the candidates it would promote, and the
correlation of the statistic with the true gain; the last row, "no check", promotes every candidate.
Only the default rule's verdicts shaped the replay
(what the next round started from); the other rows judge the same candidates after the fact.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def candidates(replay: Path, method: str) -> list[dict]:
    """One row per update of ``method`` in every seed folder of ``replay``, in round order."""
    rows = []
    seeds = sorted(p for p in replay.glob("seed*") if (p / "bench_feedback.json").exists())
    if not seeds and (replay / "bench_feedback.json").exists():
        seeds = [replay]
    if not seeds:
        raise SystemExit(f"{replay}: no bench_feedback.json (in it or in seed*/): run "
                         f"benchmarks/bench_feedback.py --gate --out {replay} first")
    for sd in seeds:
        res = json.loads((sd / "bench_feedback.json").read_text())["results"].get(method)
        if res is None:
            raise SystemExit(f"{sd}/bench_feedback.json: no method {method!r} (use --method)")
        # update folders are named <parent version>+<own timestamp>: the own part sorts by round
        promos = sorted((sd / method).glob("*/promotion.json"), key=lambda p: p.parent.name.split("+")[-1])
        if len(promos) != len(res) - 1:
            raise SystemExit(f"{sd}: {len(promos)} promotion.json files for {len(res) - 1} rounds")
        for prev, row, pf in zip(res[:-1], res[1:], promos):
            promo = json.loads(pf.read_text())
            if "difference" not in promo:
                continue  # no held-out logs that round: nothing to judge
            stats = {k: promo["difference"][k]["value"] for k in ("dr", "dm") if k in promo["difference"]}
            stats.update({f"dr, clip {c}": v for c, v in (promo.get("dr_difference_by_clip") or {}).items()})
            rows.append({"replay": str(replay), "seed": sd.name, "round": row["round"],
                         "true_gain": row["candidate_utility"] - prev["utility"], "stats": stats,
                         "promotion_file": pf})
    return rows


NO_CHECK = "no check"  # the reference: every candidate promoted (an ungated replay's choices)


def score(rows: list[dict]) -> dict[str, dict]:
    gain = np.array([r["true_gain"] for r in rows])
    names = [k for k in rows[0]["stats"] if all(k in r["stats"] for r in rows)]
    out = {}
    for k in names + [NO_CHECK]:
        v = np.ones(len(rows)) if k == NO_CHECK else np.array([r["stats"][k] for r in rows], dtype=float)
        up = v > 0
        out[k] = {"agree": float(np.mean(up == (gain > 0))), "promoted": int(up.sum()),
                  "false_promotions": int((up & (gain <= 0)).sum()),
                  "missed_improvements": int((~up & (gain > 0)).sum()),
                  "gain_of_promoted": float(gain[up].sum()),
                  "correlation": float(np.corrcoef(v, gain)[0, 1]) if v.std() > 0 and gain.std() > 0 else None}
    return out


def print_table(name: str, part: dict, width: int = 14) -> None:
    """``part``: {"candidates", "really_better", "statistics": score(rows)}."""
    print(f"\n{name}: {part['candidates']} candidates, {part['really_better']} really better")
    print(f"{'statistic':{width}s} {'agrees':>7s} {'promotes':>9s} {'false':>6s} {'missed':>7s} "
          f"{'gain promoted':>14s} {'corr':>6s}")
    for k, s in part["statistics"].items():
        corr = f"{s['correlation']:+.2f}" if s["correlation"] is not None else "   -"
        print(f"{k:{width}s} {s['agree']:7.2f} {s['promoted']:9d} {s['false_promotions']:6d} "
              f"{s['missed_improvements']:7d} {s['gain_of_promoted']:+14.3f} {corr:>6s}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("replays", nargs="+", type=Path, help="bench_feedback.py --out folders (gated runs)")
    ap.add_argument("--method", default="ips", help="the replay's method whose updates to judge")
    ap.add_argument("--output", type=Path, help="write the table as JSON here")
    args = ap.parse_args(argv)
    report = {"command": " ".join(sys.argv), "replays": {}}
    every = []
    for rp in args.replays:
        rows = candidates(rp, args.method)
        if not rows:
            raise SystemExit(f"{rp}: no update had held-out logs to judge")
        report["replays"][str(rp)] = {"candidates": len(rows), "really_better": int(sum(r["true_gain"] > 0 for r in rows)),
                                      "statistics": score(rows)}
        every += rows
    if len(args.replays) > 1:
        report["all"] = {"candidates": len(every), "really_better": int(sum(r["true_gain"] > 0 for r in every)),
                         "statistics": score(every)}
    for name, part in list(report["replays"].items()) + ([("all", report["all"])] if "all" in report else []):
        print_table(name, part)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
