"""`neural-router train`: data -> fine-tuned router folder (weights, tokenizer, pool, metrics, card)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import yaml
from pydantic import ValidationError

from neural_router.card import write_model_card
from neural_router.configs import config_path
from neural_router.data.dataset import load_routing_data, recorded_sources
from neural_router.pool import ModelPool
from neural_router.training.trainer import TrainConfig, train_router
from neural_router.validation import describe

log = logging.getLogger(__name__)

def default_config_path(name: str) -> Path:
    """The shipped default ``configs/<name>`` (installed with the package as ``neural_router.configs``)."""
    return config_path(name)


def load_train_config(path: str | Path | None, overrides: dict | None = None) -> TrainConfig:
    p = Path(path) if path else default_config_path("train.yaml")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"training config {p} does not exist") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{p}: not valid YAML:\n{e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: a training config is a mapping of keys (e.g. 'epochs: 10'), "
                         f"not a {type(raw).__name__}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    raw.update(given)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        source = f"{p}" + (f" with the command-line options for {', '.join(sorted(given))}" if given else "")
        raise ValueError(f"{source}: invalid training config (keys: neural_router/trainer.py TrainConfig):\n"
                         f"{describe(e, raw)}") from None


def run_train(data: list[str], output: str | Path, config: str | Path | None = None,
              pool_file: str | Path | None = None, overrides: dict | None = None,
              encoder_config=None, progress: bool = True) -> Path:
    cfg = load_train_config(config, overrides)   # both checked before the output folder is made
    pool = ModelPool.from_yaml(pool_file or default_config_path("models.yaml"))
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        t0 = time.time()
        ds = load_routing_data(data, pool, cfg.data)
        train, val = ds.split(cfg.data.val_fraction, cfg.data.split_salt)
        log.info("data: %s; train %d, validation %d prompts", ds.summary(), len(train), len(val))
        model, tokenizer, history = train_router(train, val if len(val) else None, pool, cfg,
                                                 encoder_config=encoder_config, progress=progress)
        model.save_pretrained(out)
        tokenizer.save_pretrained(str(out))
        pool.subset(model.config.models).to_yaml(out / "models.yaml")
        # "summary" counts what the weights were trained on (as an update's metrics do: updates read
        # its observed_per_model to share their change per model); "data_summary" the whole dataset
        metrics = {"data": recorded_sources([str(d) for d in data]), "summary": train.summary(), "data_summary": ds.summary(),
                   "train_prompts": len(train),
                   "val_prompts": len(val), "val_fraction": cfg.data.val_fraction,
                   "split_salt": cfg.data.split_salt, "history": history,
                   "train_minutes": (time.time() - t0) / 60, "config": cfg.model_dump(mode="json")}
        (out / "training_metrics.json").write_text(json.dumps(metrics, indent=2))
        write_model_card(out)
        log.info("saved router to %s (%.1f min)", out, metrics["train_minutes"])
        return out
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
