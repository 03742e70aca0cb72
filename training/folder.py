"""Writing a router folder: what ``neural-router train`` and ``neural-router update`` both produce and
every predictor loads (weights, tokenizer, pool, training metrics, model card)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neural_router.card import write_model_card
from neural_router.modeling.model import RouterModel
from neural_router.pool import ModelPool


def save_router_folder(out: str | Path, model: RouterModel, tokenizer, pool: ModelPool, metrics: dict[str, Any],
                       extra_json: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write ``model`` (``model.safetensors``, ``router_config.json``, the encoder config), its
    tokenizer, the pool entries of its models (``models.yaml``), ``training_metrics.json`` and each
    of ``extra_json`` (file name -> content, e.g. ``promotion.json``) into the folder ``out``, then
    the model card (``README.md``), which reads them. Returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(str(out))
    pool.subset(model.config.models).to_yaml(out / "models.yaml")
    for name, content in {"training_metrics.json": metrics, **(extra_json or {})}.items():
        (out / name).write_text(json.dumps(content, indent=2, default=float))
    write_model_card(out)
    return out
