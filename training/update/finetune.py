"""Train an update of an existing router: the trainer's steps (:mod:`neural_router.training.trainer`)
started from the parent router, then the update's own steps on the result (:class:`UpdateSteps`)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from neural_router.data.dataset import RoutingDataset
from neural_router.modeling.model import RouterModel
from neural_router.pool import ModelPool
from neural_router.training.activation_cache import ActivationCache
from neural_router.training.config import TrainConfig
from neural_router.training.losses import evaluate_loss
from neural_router.training.router_init import build_router_config
from neural_router.training.trainer import Run, begin, fit_soup, ready
from neural_router.training.update.heads import (calibrate_quality_bias, config_from_parent, mix_back,
                                                 model_from_parent, refit_quality_head, transfer_heads,
                                                 trunk_features)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpdateSteps:
    """How an update changes the parent router. Defaults: fine-tune, keep all of the change.

    ``cold_start_prior``: prior quality of a model the parent does not know (default: the mean
    quality of the known ones). ``head_refit``: no fine-tune; only the quality head is refitted on
    the parent's frozen trunk, penalised toward its rows with this strength. ``interpolate``: keep
    this share of the change (``row_interpolate``: one share per model for its head rows).
    ``bias_calibration``: then shift each model's quality bias toward its mean observed training
    score, shrunk by this many pseudo-observations. ``head_transfer``: then rewrite the quality row
    of each of ``head_transfer_models`` as a mixture of the other rows, with a prior at their average
    as strong as this many outcomes.
    """

    cold_start_prior: float | None = None
    head_refit: float | None = None
    interpolate: float = 1.0
    row_interpolate: np.ndarray | None = None
    bias_calibration: float | None = None
    head_transfer: float | None = None
    head_transfer_models: tuple[str, ...] = ()

    def check(self, models: list[str]) -> None:
        """ValueError, before any training, for a setting out of range or a model not in ``models``."""
        if not 0.0 < self.interpolate <= 1.0:
            raise ValueError(f"interpolate must be in (0, 1], got {self.interpolate}")
        r = self.row_interpolate
        if r is not None and (np.shape(r) != (len(models),) or not ((np.asarray(r) > 0) & (np.asarray(r) <= 1)).all()):
            raise ValueError(f"row_interpolate must hold one share in (0, 1] per model ({len(models)}), "
                             f"got {np.asarray(r).tolist()}")
        if self.bias_calibration is not None and self.bias_calibration < 0:
            raise ValueError(f"bias_calibration must be >= 0 (pseudo-observations), got {self.bias_calibration}")
        if self.head_transfer is not None and not (math.isfinite(self.head_transfer) and self.head_transfer > 0):
            raise ValueError(f"head_transfer must be a finite pseudo count > 0, got {self.head_transfer}")
        unknown = [m for m in self.head_transfer_models if m not in models]
        if unknown:
            raise ValueError(f"head_transfer_models {unknown} are not in the training data's models "
                             f"({', '.join(models)})")

    @property
    def mixes_back(self) -> bool:
        return self.interpolate < 1.0 or self.row_interpolate is not None


def _refit(run: Run, strength: float) -> list[dict]:
    """The quality head alone, refitted on the frozen trunk's features (no epochs)."""
    feats = trunk_features(run.model, run.tr, run.cfg, run.start_layer, run.accelerator.device)
    return [{"epoch": 0, "head_refit": refit_quality_head(run.model, run.tr, feats, strength)}]


def _finish_heads(run: Run, train: RoutingDataset, weights: np.ndarray, steps: UpdateSteps,
                  history: list[dict]) -> None:
    """The bias calibration and then the head transfer, recorded with the last epoch of ``history``."""
    model, device = run.model, run.accelerator.device
    if steps.bias_calibration is not None:
        _, pred = evaluate_loss(model, run.tr, run.cfg, run.start_layer, device)
        shift = calibrate_quality_bias(train.scores, pred, weights, steps.bias_calibration)
        with torch.no_grad():
            model.quality.bias += torch.as_tensor(shift, dtype=model.quality.bias.dtype,
                                                  device=model.quality.bias.device)
        if history:   # recorded with the last epoch, so len(history) still counts epochs
            history[-1]["quality_bias_shift"] = dict(zip(train.models, np.round(shift, 4).tolist()))
        log.info("quality bias recalibrated (pseudo count %g): %s", steps.bias_calibration,
                 {m: round(float(x), 3) for m, x in zip(train.models, shift) if abs(x) >= 0.01})
    if steps.head_transfer is not None and steps.head_transfer_models:
        _, pred = evaluate_loss(model, run.tr, run.cfg, run.start_layer, device)   # after any bias shift
        mixes = transfer_heads(model, train, pred, weights, steps.head_transfer, steps.head_transfer_models)
        if history:
            history[-1]["head_transfer"] = mixes


def update_router(train: RoutingDataset, val: RoutingDataset | None, pool: ModelPool, cfg: TrainConfig,
                  parent: RouterModel, steps: UpdateSteps = UpdateSteps(),
                  sample_weights: np.ndarray | None = None, val_sample_weights: np.ndarray | None = None,
                  activation_cache: ActivationCache | None = None, progress: bool = False):
    """Train a new router for ``train.models`` from ``parent`` (its encoder, trunk and the head rows
    of the models it knows; input settings follow the parent) as ``steps`` say; returns (model on
    the CPU, tokenizer, history). Weights and cache as in :func:`~neural_router.training.trainer.begin`
    and :func:`~neural_router.training.trainer.ready`."""
    steps.check(list(train.models))
    cfg = cfg.model_copy(update={"max_length": parent.config.max_length,
                                 "head_tokens": parent.config.head_tokens, "hidden": parent.config.hidden})
    run = begin(train, val, cfg, sample_weights, val_sample_weights, validate=steps.head_refit is None)
    rc = config_from_parent(build_router_config(train, pool, cfg, run.tr.input_tokens), parent.config, train)
    model = model_from_parent(rc, parent, train, steps.cold_start_prior)
    start = ready(run, model, steps.mixes_back or cfg.soup > 1, activation_cache)
    if steps.head_refit is not None:
        history = _refit(run, steps.head_refit)
    else:
        history = fit_soup(run, start, progress)
    if steps.mixes_back:
        row = None if steps.row_interpolate is None else np.asarray(steps.row_interpolate, dtype=np.float32)
        mix_back(model, start, steps.interpolate, row)
    weights = sample_weights if sample_weights is not None else np.ones_like(train.scores, dtype=np.float32)
    _finish_heads(run, train, np.asarray(weights, dtype=np.float32), steps, history)
    return model.eval().cpu(), run.tokenizer, history
