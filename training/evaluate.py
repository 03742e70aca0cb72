"""`neural-router eval`: the router vs baselines on the validation split it never trained on."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from neural_router.card import write_model_card
from neural_router.data import DataConfig, RoutingDataset, load_routing_data
from neural_router.evaluation import evaluate
from neural_router.pool import ModelPool
from neural_router.predictors import load_predictor, require_router_folder

log = logging.getLogger(__name__)

DEFAULT_PAIRS = [("gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat")]


def split_as_trained(tm: dict, data: list[str], models: list[str],
                     pool: ModelPool) -> tuple[RoutingDataset, RoutingDataset, str]:
    """``data`` split into (train, validation) exactly as the training recorded in ``tm`` (a
    ``training_metrics.json``, or {} for the defaults) split it: same fraction and salt, which is
    returned too. Restricted to ``models``; models of other pools in the same data are skipped, not
    errors."""
    dcfg = DataConfig(**tm.get("config", {}).get("data", {})) if tm else DataConfig()
    ds = load_routing_data(data, pool, dcfg.model_copy(update={"unknown_models": "skip"}))
    ds = ds.select_models([m for m in models if m in ds.models])
    salt = tm.get("split_salt", dcfg.split_salt)
    train, val = ds.split(tm.get("val_fraction", dcfg.val_fraction), salt)
    return train, val, salt


def run_eval(router_dir: str | Path, data: list[str] | None = None, output: str | Path | None = None,
             pool_file: str | Path | None = None, baselines: bool = True,
             pairs: list[tuple[str, str]] | None = None, int8: bool = False) -> dict:
    """Split the data exactly as training did (same fraction and salt) and evaluate on validation."""
    d = Path(router_dir)
    require_router_folder(d)   # before blaming its training_metrics.json
    tm_path = d / "training_metrics.json"
    tm = json.loads(tm_path.read_text()) if tm_path.is_file() else {}
    data = data or tm.get("data")
    if not data:
        raise ValueError(f"{d} has no training_metrics.json naming its data; pass --data")
    predictor = load_predictor(d, device="auto", int8=int8)
    pool = ModelPool.from_yaml(pool_file) if pool_file else predictor.pool
    train, val, _ = split_as_trained(tm, data, predictor.models, pool)
    if not len(val):
        raise ValueError("the validation split is empty; raise data.val_fraction")
    preds = predictor.predict(val.prompts)
    out = Path(output) if output else d
    out.mkdir(parents=True, exist_ok=True)
    report = evaluate(preds, train, val, pool, baselines=baselines,
                      encoder=tm.get("config", {}).get("encoder", "default"),
                      pairs=DEFAULT_PAIRS + list(pairs or []), plot_path=out / ("cost_quality.int8.png" if int8 else "cost_quality.png"))
    report["router"] = str(d)
    report["router_version"] = predictor.version
    report["predictor"] = {"provider": predictor.provider, "int8": int8}
    name = "eval_report.int8.json" if int8 else "eval_report.json"
    (out / name).write_text(json.dumps(report, indent=2, default=float))
    if (d / "training_metrics.json").is_file() and out.resolve() == d.resolve() and not int8:
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
