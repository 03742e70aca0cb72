"""The training losses: masked (an unobserved prompt/model cell contributes nothing), optionally
weighted per cell, plus the listwise ranking loss and the gradient reversal of the source adversary.

Quality uses binary cross-entropy with the (possibly graded) score as a soft target; output tokens
and latency use squared error in log space, where observed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from neural_router.training.batches import Tensors, bucket_batches, make_batch, run_model
from neural_router.training.config import TrainConfig


def masked_losses(out: dict[str, torch.Tensor], b: dict[str, torch.Tensor], cfg: TrainConfig):
    """Masked losses; with ``b["weights"]`` each observed cell counts with its weight (weighted mean)."""
    w = b.get("weights")

    def masked(target, fn):
        m = torch.isfinite(target)
        if w is not None:
            m = m & (w > 0)
        if not m.any():
            return out["quality_logits"].sum() * 0.0, 0
        return fn(m), int(m.sum())

    def reduce(per_cell, m):
        if w is None:
            return per_cell.mean()
        return (per_cell * w[m]).sum() / w[m].sum()

    q, nq = masked(b["scores"], lambda m: reduce(F.binary_cross_entropy_with_logits(
        out["quality_logits"][m], b["scores"][m], reduction="none"), m))
    o, _ = masked(b["log_out"], lambda m: reduce(
        F.mse_loss(out["log_out_tokens"][m], b["log_out"][m], reduction="none"), m))
    lat, _ = masked(b["log_lat"], lambda m: reduce(
        F.mse_loss(out["log_latency"][m], b["log_lat"][m], reduction="none"), m))
    total = q + cfg.loss_out_tokens * o + cfg.loss_latency * lat
    parts = {"quality": float(q.detach()), "out_tokens": float(o.detach()), "latency": float(lat.detach()), "n": nq}
    if cfg.loss_rank > 0:
        rank = rank_loss(out["quality_logits"], b["scores"], w, cfg.rank_temperature)
        total = total + cfg.loss_rank * rank
        parts["rank"] = float(rank.detach())
    return total, parts


def rank_loss(logits: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor | None,
              temperature: float) -> torch.Tensor:
    """Listwise ranking loss over each prompt's observed models: cross-entropy between
    softmax(logits) and softmax(scores / temperature), averaged over the prompts that rank anything
    (two or more observed models with different scores), each weighted by its cells' mean weight."""
    m = torch.isfinite(scores)
    if weights is not None:
        m = m & (weights > 0)
    s = scores.nan_to_num(0.0)
    hi = s.masked_fill(~m, -math.inf).amax(1)
    lo = s.masked_fill(~m, math.inf).amin(1)
    rows = (m.sum(1) >= 2) & (hi - lo > 1e-6)
    if not rows.any():
        return logits.sum() * 0.0
    m, s, z = m[rows], s[rows], logits[rows]
    target = torch.softmax((s / temperature).masked_fill(~m, -math.inf), dim=1)
    logp = torch.log_softmax(z.masked_fill(~m, -math.inf), dim=1).masked_fill(~m, 0.0)
    ce = -(target * logp).sum(1)
    if weights is None:
        return ce.mean()
    rw = (weights[rows] * m).sum(1) / m.sum(1)
    return (ce * rw).sum() / rw.sum().clamp_min(1e-12)


@torch.no_grad()
def evaluate_loss(model, t: Tensors, cfg: TrainConfig, start_layer: int, device) -> tuple[float, np.ndarray]:
    """(mean masked quality loss over ``t``'s observed cells, [N, M] predicted qualities), eval mode."""
    model.eval()
    tot, n, preds = 0.0, 0, np.zeros(tuple(t.scores.shape), dtype=np.float32)
    for idx in bucket_batches(t.lengths, cfg.batch_size * 2, None):
        b = make_batch(t, idx, device)
        out = run_model(model, b, start_layer)
        _, parts = masked_losses(out, b, cfg)
        tot += parts["quality"] * parts["n"]
        n += parts["n"]
        preds[idx] = torch.sigmoid(out["quality_logits"]).float().cpu().numpy()
    return tot / max(n, 1), preds


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient flows back multiplied by ``-scale`` (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.scale * grad, None


def logits(p: np.ndarray) -> np.ndarray:
    """Elementwise logit of predicted qualities, clipped to [1e-6, 1 - 1e-6] (float64)."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))
