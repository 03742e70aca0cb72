"""`neural-router eval`: the router vs baselines on the validation split it never trained on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from neural_router.card import write_model_card
from neural_router.evaluation.report import evaluate, split_as_trained
from neural_router.pool import ModelPool
from neural_router.inference.predictors import load_predictor, require_router_folder, requested_precision

log = logging.getLogger(__name__)

DEFAULT_PAIRS = [("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat")]


def checked_pair(pair: tuple[str, ...], pool: ModelPool, models: list[str]) -> tuple[str, str]:
    """A user's (strong, weak) pair in the router's canonical names; a clear error otherwise."""
    if len(pair) != 2 or not all(pair):
        raise ValueError(f"--pair {','.join(pair)!r}: give two models as STRONG,WEAK, e.g. "
                         f"--pair {','.join(DEFAULT_PAIRS[0])}")
    names = tuple(pool.resolve(n.strip()) for n in pair)
    for given, name in zip(pair, names):
        if name not in models:
            raise ValueError(f"--pair {','.join(pair)!r}: {given!r} is not one of the router's models "
                             f"({', '.join(models)})")
    return names[0], names[1]


def run_eval(router_dir: str | Path, data: list[str] | None = None, output: str | Path | None = None,
             pool_file: str | Path | None = None, baselines: bool = True,
             pairs: list[tuple[str, str]] | None = None, int8: bool = False, precision: str = "auto") -> dict:
    """Split the data exactly as training did (same fraction and salt) and evaluate on validation.

    ``precision`` picks the exported file as ``neural-router predict`` does (``int8=True`` is
    ``precision="int8"``); ``auto`` evaluates what the folder runs by default and writes
    ``eval_report.json`` and ``cost_quality.png`` (and the model card, evaluated in place); any
    other precision writes ``eval_report.<precision>.json`` and ``cost_quality.<precision>.png``."""
    d = Path(router_dir)
    require_router_folder(d)   # before blaming its training_metrics.json
    tm_path = d / "training_metrics.json"
    tm = json.loads(tm_path.read_text()) if tm_path.is_file() else {}
    precision = requested_precision(precision, int8=int8)
    predictor = load_predictor(d, device="auto", precision=precision)
    pool = ModelPool.from_yaml(pool_file) if pool_file else predictor.pool
    pairs = DEFAULT_PAIRS + [checked_pair(p, pool, predictor.models) for p in pairs or []]
    train, val, _ = split_as_trained(tm, data, predictor.models, pool, tm_path)
    if not len(val):
        raise ValueError("the validation split is empty; raise data.val_fraction")
    preds = predictor.predict(val.prompts)
    out = Path(output) if output else d
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if precision == "auto" else f".{precision}"
    report = evaluate(preds, train, val, pool, baselines=baselines,
                      encoder=tm.get("config", {}).get("encoder", "default"),
                      pairs=pairs, plot_path=out / f"cost_quality{suffix}.png")
    report["router"] = str(d)
    report["router_version"] = predictor.version
    report["predictor"] = {"provider": predictor.provider, "int8": predictor.precision == "int8",
                           "precision": predictor.precision, "model_file": predictor.model_file}
    (out / f"eval_report{suffix}.json").write_text(json.dumps(report, indent=2, default=float))
    if (d / "training_metrics.json").is_file() and out.resolve() == d.resolve() and not suffix:
        write_model_card(d)
    return report


def print_summary(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"validation: {report['n_test']} prompts, {len(report['models'])} models")
    for col in ("router", "AIQ", "quality @ best single's cost", "cost to match best single",
                "quality-only", "mean AUROC"):
        t.add_column(col, justify="left" if col == "router" else "right")
    t.add_row("best single models (hull)", f"{report['single_models_aiq']:.4f}", "", "", "", "")
    t.add_row("random", f"{report['random']['aiq']:.4f}", "", "", "", "")
    for name, r in report["routers"].items():
        rel = r["cost_to_match_best_single"] / r["best_single"]["cost"]
        aurocs = [v["auroc"] for v in r["prediction_metrics"].values() if v.get("auroc") == v.get("auroc")
                  and "auroc" in v]
        t.add_row(name, f"{r['aiq']:.4f}", f"{r['quality_at_best_single_cost']:.4f}",
                  f"{rel:.0%}" if rel == rel else "never", f"{r['quality_only']['all']['router']:.4f}",
                  f"{sum(aurocs) / len(aurocs):.3f}" if aurocs else "")
    t.add_row("oracle", "", f"{report['oracle']['quality']:.4f}", "", "", "")
    Console(width=150).print(t)
    for name, r in report["routers"].items():
        for tm in r.get("two_model", []):
            Console().print(f"{name}: {tm['strong']} vs {tm['weak']}: APGR {tm['apgr']:.3f}, "
                            f"CPT(50%) {tm['cpt50']:.2f}, CPT(80%) {tm['cpt80']:.2f}")
