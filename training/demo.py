"""`make demo`: train on the shared RouterBench data, evaluate against the baselines, export to ONNX
(fp32 + int8) and route a few sample prompts under three preference settings."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from neural_router.inference.export import export_onnx
from neural_router.policy.routing import PRESETS, Constraints
from neural_router.router import Router
from neural_router.training.evaluate import print_summary, run_eval
from neural_router.training.train import run_train

SAMPLES = [
    "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",
    "Question: Which of these is a renewable energy source?\nA) coal\nB) wind\nC) natural gas\nD) oil\nAnswer:",
    "Fill in the blank: The trophy doesn't fit into the brown suitcase because the _ is too large. "
    "Option 1: trophy Option 2: suitcase",
    "Prove that there are infinitely many primes, then give the first five primes greater than 100.",
]
SETTINGS = {name: PRESETS[name] for name in ("quality", "balanced", "cheap")}   # the service's presets


def run_demo(data: list[str], output: str | Path, config: str | Path | None = None,
             pool_file: str | Path | None = None, encoder_config=None, samples: list[str] | None = None) -> Path:
    out = Path(output)
    console = Console(width=150)
    console.rule("1. train")
    router_dir = run_train(data, out / "router", config, pool_file, encoder_config=encoder_config)
    console.rule("2. evaluate on the validation split, against the baselines")
    report = run_eval(router_dir)
    print_summary(report)
    console.print(f"report: {router_dir / 'eval_report.json'}, plot: {router_dir / 'cost_quality.png'}")
    console.rule("3. export to ONNX")
    exp = export_onnx(router_dir, out / "onnx", int8=True)
    console.print(f"fp32 parity: max |Δquality| {exp['fp32']['max_abs_diff_quality']:.1e}; "
                  f"int8: {exp['int8']['max_abs_diff_quality']:.1e}")
    console.rule("4. route sample prompts (ONNX Runtime)")
    router = Router.from_pretrained(out / "onnx")
    t = Table(title=f"decisions ({router.predictor.provider})")
    t.add_column("prompt")
    for name in SETTINGS:
        t.add_column(name)
    for p in samples or SAMPLES:
        cells = []
        for prefs in SETTINGS.values():
            r = router.route(p, prefs, Constraints())
            row = r.predictions.as_dicts()[0][r.model]
            cells.append(f"{r.model}\nq={row['quality']:.2f} ${row['cost_usd']:.1e}")
        t.add_row(p[:60] + "…", *cells)
    console.print(t)
    console.print(f"done: router in {router_dir}, ONNX export in {out / 'onnx'}")
    return out
