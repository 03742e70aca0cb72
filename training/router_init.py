"""The starting point of a router trained from scratch: its :class:`RouterConfig` (models, input
settings, per-model cost calibration and output-token defaults from the training data) and its
network (the pretrained or a random encoder, optionally cut to its first layers, with heads)."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from neural_router.data.dataset import RoutingDataset
from neural_router.modeling.model import DEFAULT_ENCODER, RouterConfig, RouterModel
from neural_router.pool import ModelPool
from neural_router.training.config import TrainConfig
from neural_router.training.losses import logits

log = logging.getLogger(__name__)


def cost_calibration(ds: RoutingDataset, pool: ModelPool, input_tokens: np.ndarray) -> list[float]:
    """Per model: median of observed cost / profile cost, where costs were observed (else 1)."""
    sub = pool.subset(ds.models)
    out_tokens = np.where(np.isnan(ds.output_tokens), np.nanmedian(ds.output_tokens) if
                          np.isfinite(ds.output_tokens).any() else 256.0, ds.output_tokens)
    profile = sub.cost_usd(input_tokens, out_tokens)
    scale = []
    for j in range(len(ds.models)):
        ok = np.isfinite(ds.cost_usd[:, j]) & (profile[:, j] > 0)
        r = ds.cost_usd[ok, j] / profile[ok, j]
        scale.append(float(np.clip(np.median(r), 0.05, 20.0)) if ok.sum() >= 5 else 1.0)
    return scale


def build_router_config(ds: RoutingDataset, pool: ModelPool, cfg: TrainConfig,
                        input_tokens: np.ndarray) -> RouterConfig:
    """The router config of a model trained on ``ds`` (``input_tokens``: its prompts' full lengths)."""
    med_out = [float(np.nanmedian(ds.output_tokens[:, j])) if np.isfinite(ds.output_tokens[:, j]).any()
               else 256.0 for j in range(len(ds.models))]
    return RouterConfig(
        models=list(ds.models), binary=[bool(b) for b in ds.binary_models()], encoder=cfg.encoder,
        max_length=cfg.max_length, head_tokens=cfg.head_tokens, hidden=cfg.hidden, dropout=cfg.dropout,
        latency_learned=[bool(np.isfinite(ds.latency_ms[:, j]).any()) for j in range(len(ds.models))],
        cost_scale=cost_calibration(ds, pool, input_tokens), default_output_tokens=med_out,
        version=time.strftime("%Y%m%d-%H%M%S"))


def initial_quality_bias(scores: np.ndarray, weights: np.ndarray | None = None,
                         lo: float = 0.02, hi: float = 0.98) -> np.ndarray:
    """Per model, the logit of its mean observed score (weighted by ``weights`` where given),
    clipped to ``[lo, hi]`` so that an all-0 or all-1 model keeps a finite bias; a model without
    observed cells gets 0 (p = 0.5). The starting quality bias of ``TrainConfig.init_quality_bias``."""
    obs = np.isfinite(scores)
    w = np.where(obs, 1.0 if weights is None else weights, 0.0).astype(np.float64)
    tot = w.sum(0)
    mean = np.where(tot > 0, (w * np.where(obs, scores, 0.0)).sum(0) / np.maximum(tot, 1e-12), 0.5)
    return logits(np.clip(mean, lo, hi)).astype(np.float32)


def new_model(rc: RouterConfig, cfg: TrainConfig, train: RoutingDataset, encoder_config=None,
              sample_weights: np.ndarray | None = None) -> RouterModel:
    """A router to train from scratch: ``cfg.encoder`` (``encoder_config``: a random encoder of that
    shape instead), kept to its first ``cfg.encoder_layers`` layers, its quality bias at the
    training data's mean scores with ``cfg.init_quality_bias``."""
    if encoder_config is not None:
        model = RouterModel.from_encoder_config(rc, encoder_config)
    else:
        model = RouterModel.from_encoder(rc, cfg.encoder)
    if cfg.init_quality_bias:
        with torch.no_grad():
            model.quality.bias.copy_(torch.as_tensor(initial_quality_bias(train.scores, sample_weights)))
    if cfg.encoder_layers and cfg.encoder_layers != model.num_layers():
        level = logging.INFO if cfg.encoder == DEFAULT_ENCODER else logging.WARNING
        log.log(level, "keeping the first %d of the encoder's %d layers (encoder_layers; 0 keeps all)",
                cfg.encoder_layers, model.num_layers())
        model.truncate_encoder(cfg.encoder_layers)
    return model
