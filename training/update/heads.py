"""What an update does to a router's weights beyond fine-tuning: start from the parent router
(:func:`model_from_parent`, new pool members from a cold-start prior), refit only the quality head
(:func:`refit_quality_head`), keep a share of the change (:func:`mix_back`), recalibrate the quality
biases (:func:`calibrate_quality_bias`) and rewrite a new member's head as a mixture of the known
ones (:func:`transfer_heads`)."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from neural_router.data.dataset import RoutingDataset
from neural_router.modeling.model import HEADS, RouterConfig, RouterModel
from neural_router.training.batches import Tensors, bucket_batches, capture_trunk, make_batch, run_model
from neural_router.training.config import TrainConfig
from neural_router.training.losses import logits

log = logging.getLogger(__name__)


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def known_models_mean_quality(train: RoutingDataset, parent: RouterModel) -> float:
    """The default cold-start prior: mean observed score of the models ``parent`` knows (in
    ``train``), else the mean of its quality heads' sigmoid(bias)."""
    cols = [j for j, m in enumerate(train.models) if m in parent.config.models]
    s = train.scores[:, cols] if cols else np.zeros((0, 0))
    if np.isfinite(s).any():
        return float(np.nanmean(s))
    return float(torch.sigmoid(parent.quality.bias.detach()).mean())


def _copy_heads(model: RouterModel, parent: RouterModel, rc: RouterConfig, known: list[str], shift: float) -> None:
    """Each head row of a model the parent knows is copied; a new model's rows start as the mean of
    the known rows (quality bias + ``shift``; output tokens at ``rc.default_output_tokens``)."""
    old = parent.config
    known_idx = [old.models.index(m) for m in known]
    with torch.no_grad():
        for name in HEADS:
            src, dst = getattr(parent, name), getattr(model, name)
            w_mean, b_mean = src.weight[known_idx].mean(0), src.bias[known_idx].mean()
            for j, m in enumerate(rc.models):
                if m in old.models:
                    i = old.models.index(m)
                    dst.weight[j], dst.bias[j] = src.weight[i], src.bias[i]
                elif name == "quality":
                    dst.weight[j], dst.bias[j] = w_mean, b_mean + shift
                elif name == "out_tokens":
                    dst.weight[j] = 0.0
                    dst.bias[j] = math.log1p(rc.default_output_tokens[j])
                else:
                    dst.weight[j], dst.bias[j] = w_mean, b_mean


def model_from_parent(rc: RouterConfig, parent: RouterModel, train: RoutingDataset,
                      cold_start_prior: float | None = None) -> RouterModel:
    """A RouterModel for ``rc.models`` initialised from ``parent``: the encoder, feature norm and trunk
    are copied; each head row of a model the parent knows is copied; a new model's rows start as
    the mean of the known rows (an "average known model" in logit space), its quality bias shifted
    so that its prior is ``cold_start_prior`` (default: the mean quality of the known models) and
    its output-token bias set from ``rc.default_output_tokens``."""
    model = RouterModel(rc, copy.deepcopy(parent.encoder).cpu())
    for p in model.encoder.parameters():  # the parent may come back from training partly frozen
        p.requires_grad_(True)
    model.feature_norm.load_state_dict(parent.feature_norm.state_dict())
    model.trunk.load_state_dict(parent.trunk.state_dict())
    known = [m for m in rc.models if m in parent.config.models]
    if not known:
        raise ValueError("the parent router shares no model with the new router; nothing to start from")
    mean_q = known_models_mean_quality(train, parent)
    prior = mean_q if cold_start_prior is None else float(cold_start_prior)
    if not 0.0 < prior < 1.0:
        raise ValueError(f"cold_start_prior must be in (0, 1), got {prior}")
    _copy_heads(model, parent, rc, known, _logit(prior) - _logit(mean_q))
    new = [m for m in rc.models if m not in parent.config.models]
    if new:
        log.info("new models %s start from the cold-start prior %.3f", ", ".join(new), prior)
    return model


def config_from_parent(rc: RouterConfig, parent: RouterConfig, train: RoutingDataset) -> RouterConfig:
    """Keep the parent's input settings; per model, keep the parent's calibration where the new data
    has too little to estimate it (no costs / output tokens / latencies observed)."""
    rc.encoder, rc.max_length, rc.head_tokens, rc.hidden = (parent.encoder, parent.max_length,
                                                             parent.head_tokens, parent.hidden)
    for j, m in enumerate(rc.models):
        if m not in parent.models:
            continue
        i = parent.models.index(m)
        if np.isfinite(train.cost_usd[:, j]).sum() < 5:
            rc.cost_scale[j] = parent.cost_scale[i]
        if not np.isfinite(train.output_tokens[:, j]).any():
            rc.default_output_tokens[j] = parent.default_output_tokens[i]
        rc.latency_learned[j] = bool(rc.latency_learned[j] or parent.latency_learned[i])
        if not np.isfinite(train.scores[:, j]).any():
            rc.binary[j] = parent.binary[i]
    return rc


def mix_back(model: RouterModel, start: dict[str, torch.Tensor], interpolate: float,
             row_interpolate: np.ndarray | None = None) -> None:
    """In place: ``interpolate * trained + (1 - interpolate) * start`` (WiSE-FT style);
    ``row_interpolate`` (one share per model) replaces ``interpolate`` for the head rows."""
    rows = torch.from_numpy(row_interpolate) if row_interpolate is not None else None
    mixed = {}
    for k, v in model.state_dict().items():
        a = interpolate
        if rows is not None and k.split(".")[0] in HEADS:   # one share per model row
            a = rows.to(v.device).view(-1, *([1] * (v.dim() - 1)))
        mixed[k] = a * v + (1 - a) * start[k].to(v.device) if v.is_floating_point() else v
    model.load_state_dict(mixed)


def trunk_features(model: RouterModel, t: Tensors, cfg: TrainConfig, start_layer: int, device) -> torch.Tensor:
    """The trunk's output (what the heads read) for every prompt of ``t``, in eval mode: ``[N, hidden]``
    (on the CPU; the model runs on ``device``)."""
    model.to(device).eval()
    feats = torch.zeros(len(t.lengths), model.config.hidden)
    last, hook = capture_trunk(model)
    try:
        with torch.no_grad():
            for idx in bucket_batches(t.lengths, cfg.batch_size * 2, None):
                run_model(model, make_batch(t, idx, device), start_layer)
                feats[torch.as_tensor(idx)] = last[0].float().cpu()
    finally:
        hook.remove()
    return feats


def refit_quality_head(model: RouterModel, t: Tensors, feats: torch.Tensor, strength: float) -> dict:
    """Refit every model's quality head row (weights and bias) on fixed trunk features by weighted
    logistic regression (soft labels for graded scores), penalised toward the current row:
    ``sum_i w_im BCE(z_i . W_m + b_m, s_im) + strength / 2 * |(W_m, b_m) - (W0_m, b0_m)|^2``.
    Convex and deterministic: the same data gives the same head, more data moves it further."""
    if not (math.isfinite(strength) and strength > 0):
        raise ValueError(f"head_refit must be a finite penalty > 0, got {strength}")
    head = model.quality
    W0, b0 = head.weight.detach().float().cpu().clone(), head.bias.detach().float().cpu().clone()
    S = t.scores.float()
    w = t.weights.float() if t.weights is not None else torch.ones_like(S)
    obs = torch.isfinite(S) & (w > 0)
    y, wm = S.nan_to_num(0.0), torch.where(obs, w, torch.zeros_like(w))
    W, b = W0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=300, tolerance_grad=1e-6, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        bce = F.binary_cross_entropy_with_logits(feats @ W.T + b, y, reduction="none")
        loss = (bce * wm).sum() + 0.5 * strength * (((W - W0) ** 2).sum() + ((b - b0) ** 2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        head.weight.copy_(W.detach().to(head.weight))
        head.bias.copy_(b.detach().to(head.bias))
    return {"strength": strength, "observed": int(obs.sum()),
            "bias_shift": [round(float(x), 4) for x in (b - b0).detach()],
            "weight_change": round(float((W - W0).detach().norm()), 4)}


def fit_head_mixture(basis_logits: np.ndarray, y: np.ndarray, w: np.ndarray, pseudo_count: float,
                     c0: float = 0.0, steps: int = 25) -> tuple[np.ndarray, float]:
    """Weighted logistic regression of ``y`` (scores in [0, 1]) on ``basis_logits`` ([n, K], the
    other models' quality logits on the same prompts): ``(alpha [K], c)`` minimising
    ``sum w * CE(y, sigmoid(basis_logits @ alpha + c))`` plus a Gaussian prior at ``alpha = 1/K``,
    ``c = c0`` (the cold-start row: the average of the known rows, shifted by ``c0``), per
    coordinate as strong as ``pseudo_count`` cells at p = 0.5 (precision ``pseudo_count / 4`` times
    the feature's weighted mean square over the cells), by Newton steps. With few cells the fit
    stays near the average model; as they accumulate it moves to the models the target behaves
    like. The prior is per coordinate, so the sum of the weights (how steep the target's logit is)
    can move further from 1 than one coordinate alone (docs/feedback-loop.md compares a g-prior)."""
    n, k = basis_logits.shape
    x = np.concatenate([basis_logits, np.ones((n, 1))], axis=1).astype(np.float64)
    w = w.astype(np.float64)
    y = y.astype(np.float64)
    prior = np.concatenate([np.full(k, 1.0 / k), [c0]])
    reg = np.diag(pseudo_count / 4 * np.maximum((x ** 2 * w[:, None]).sum(0) / max(w.sum(), 1e-12), 1e-3))
    theta = prior.copy()
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ theta, -30, 30)))
        grad = x.T @ (w * (p - y)) + reg @ (theta - prior)
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + reg + 1e-9 * np.eye(k + 1)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return theta[:k], float(theta[k])


def transfer_heads(model: RouterModel, train: RoutingDataset, pred: np.ndarray, weights: np.ndarray,
                   pseudo_count: float, targets: Sequence[str]) -> dict[str, dict]:
    """Replace the quality head row of each model in ``targets`` that has observed training cells
    by a mixture of the other (non-target) models' rows fitted with :func:`fit_head_mixture` on
    ``pred`` (the model's [N, M] predicted qualities on ``train``). Returns, per model, the mixture
    weights, the bias and the number of cells it was fitted on."""
    cols = [train.models.index(m) for m in model.config.models]
    if cols != list(range(len(cols))):
        raise ValueError("transfer_heads: the router's models must be the training data's, in order")
    z = logits(pred)
    basis = [j for j, m in enumerate(train.models) if m not in targets]
    if not basis:
        raise ValueError("head_transfer_models lists every model: nothing left to transfer from")
    out = {}
    with torch.no_grad():
        W, b = model.quality.weight, model.quality.bias
        for m in targets:
            j = train.models.index(m)
            obs = np.isfinite(train.scores[:, j]) & (weights[:, j] > 0)
            if not obs.any():
                continue
            c0 = float(b[j] - b[basis].mean())
            alpha, c = fit_head_mixture(z[obs][:, basis], train.scores[obs, j], weights[obs, j], pseudo_count, c0)
            a = torch.as_tensor(alpha, dtype=W.dtype, device=W.device)
            W[j] = a @ W[basis]
            b[j] = a @ b[basis] + c
            out[m] = {"n": int(obs.sum()), "bias": round(c, 6),
                      "weights": {train.models[k]: round(float(x), 6) for k, x in zip(basis, alpha)}}
            log.info("head transfer for %s from %d outcomes: %s", m, int(obs.sum()),
                     {k: v for k, v in out[m]["weights"].items() if abs(v) >= 0.05})
    return out


def calibrate_quality_bias(scores: np.ndarray, pred: np.ndarray, weights: np.ndarray, pseudo_count: float,
                           steps: int = 5) -> np.ndarray:
    """Per model, the logit shift ``d`` that minimises the weighted cross-entropy of
    ``sigmoid(logit(pred) + d)`` against the observed ``scores`` plus ``pseudo_count * d**2 / 8``
    (a Gaussian prior at no shift, as strong as ``pseudo_count`` cells at p = 0.5), by Newton steps.
    Unobserved cells (NaN score) and zero weights do not count; a model without any gets 0."""
    if pseudo_count < 0:
        raise ValueError(f"bias_calibration must be >= 0 (pseudo-observations), got {pseudo_count}")
    obs = np.isfinite(scores) & (weights > 0)
    y = np.where(obs, scores, 0.0).astype(np.float64)
    w = np.where(obs, weights, 0.0).astype(np.float64)
    z = logits(pred)
    d = np.zeros(scores.shape[1])
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(z + d)))
        grad = (w * (p - y)).sum(0) + pseudo_count * d / 4
        hess = (w * p * (1 - p)).sum(0) + pseudo_count / 4
        d = np.where(hess > 0, d - grad / np.maximum(hess, 1e-12), 0.0)
    return np.where(obs.any(0), d, 0.0)
