"""`neural-router train`: data -> fine-tuned router folder (weights, tokenizer, pool, metrics, card)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from neural_router.configs import config_path
from neural_router.data.dataset import load_routing_data, recorded_sources
from neural_router.pool import ModelPool
from neural_router.training.config import load_train_config
from neural_router.training.folder import save_router_folder
from neural_router.training.trainer import train_router

log = logging.getLogger(__name__)


def run_train(data: list[str], output: str | Path, config: str | Path | None = None,
              pool_file: str | Path | None = None, overrides: dict | None = None,
              encoder_config=None, progress: bool = True) -> Path:
    """Train a router on ``data`` into the folder ``output`` (with ``train.log``): ``TrainConfig()``
    overridden by the YAML ``config`` and then ``overrides``; the pool of ``pool_file`` (default: the
    shipped ``models.yaml``). Both are checked before the folder is made."""
    cfg = load_train_config(config, overrides)
    pool = ModelPool.from_yaml(pool_file or config_path("models.yaml"))
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
        # "summary" counts what the weights were trained on (updates read its observed_per_model to
        # share their change per model); "data_summary" the whole dataset
        metrics = {"data": recorded_sources([str(d) for d in data]), "summary": train.summary(),
                   "data_summary": ds.summary(), "train_prompts": len(train), "val_prompts": len(val),
                   "val_fraction": cfg.data.val_fraction, "split_salt": cfg.data.split_salt, "history": history,
                   "train_minutes": (time.time() - t0) / 60, "config": cfg.model_dump(mode="json")}
        save_router_folder(out, model, tokenizer, pool, metrics)
        log.info("saved router to %s (%.1f min)", out, metrics["train_minutes"])
        return out
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
