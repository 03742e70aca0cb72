"""Masked, weighted and ranking losses."""

from __future__ import annotations

import pytest
import torch

from neural_router.training.config import TrainConfig
from neural_router.training.losses import masked_losses, rank_loss

def test_masked_losses_weights_are_a_weighted_mean():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    scores = torch.tensor([[1.0, float("nan"), 0.0], [0.0, 1.0, 1.0]])
    w = torch.tensor([[3.0, 5.0, 1.0], [1.0, 0.0, 2.0]])
    out = {"quality_logits": logits, "log_out_tokens": torch.zeros(2, 3), "log_latency": torch.zeros(2, 3)}
    nan = torch.full((2, 3), float("nan"))
    b = {"scores": scores, "log_out": nan, "log_lat": nan}
    cfg = TrainConfig()
    plain, parts = masked_losses(out, b, cfg)
    m = torch.isfinite(scores)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[m], scores[m], reduction="none")
    assert torch.isclose(plain, bce.mean()) and parts["n"] == 5
    weighted, parts = masked_losses(out, {**b, "weights": w}, cfg)
    keep = m & (w > 0)                      # weight 0 drops the cell, NaN stays masked
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits[keep], scores[keep], reduction="none")
    assert torch.isclose(weighted, (bce * w[keep]).sum() / w[keep].sum()) and parts["n"] == 4
    assert not torch.isclose(weighted, plain)


def test_rank_loss_is_a_listwise_cross_entropy_over_observed_models():
    nan = float("nan")
    scores = torch.tensor([[0.9, 0.2, nan], [0.5, 0.5, 0.5], [1.0, nan, nan], [0.0, 1.0, 0.6]])
    good = torch.tensor([[3.0, -1.0, 9.0], [0.0, 5.0, -5.0], [0.0, 0.0, 0.0], [-2.0, 2.0, 1.0]])
    bad = torch.tensor([[-1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [2.0, -2.0, 0.0]])
    t = 0.2
    # rows 1 (all scored the same) and 2 (one observed model) rank nothing; the NaN cell never counts
    expect = torch.stack([-(torch.softmax(scores[0, :2] / t, 0) * torch.log_softmax(good[0, :2], 0)).sum(),
                          -(torch.softmax(scores[3] / t, 0) * torch.log_softmax(good[3], 0)).sum()]).mean()
    assert torch.isclose(rank_loss(good, scores, None, t), expect)
    assert rank_loss(bad, scores, None, t) > rank_loss(good, scores, None, t) + 1.0
    w = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [3.0, 0.0, 3.0]])
    row3 = -(torch.softmax(scores[3, [0, 2]] / t, 0) * torch.log_softmax(good[3, [0, 2]], 0)).sum()
    row0 = expect * 2 - (-(torch.softmax(scores[3] / t, 0) * torch.log_softmax(good[3], 0)).sum())
    assert torch.isclose(rank_loss(good, scores, w, t), (row0 + 3.0 * row3) / 4.0)   # weight 0 = unobserved
    assert rank_loss(good, scores[[1, 2]], None, t) == 0.0
    z = good.clone().requires_grad_()
    rank_loss(z, scores, None, t).backward()
    assert torch.isfinite(z.grad).all() and z.grad[0, 2] == 0 and (z.grad[1:3] == 0).all()
    out = {"quality_logits": good, "log_out_tokens": torch.zeros(4, 3), "log_latency": torch.zeros(4, 3)}
    b = {"scores": scores, "log_out": torch.full((4, 3), nan), "log_lat": torch.full((4, 3), nan)}
    plain, _ = masked_losses(out, b, TrainConfig())
    ranked, parts = masked_losses(out, b, TrainConfig(loss_rank=0.5, rank_temperature=t))
    assert torch.isclose(ranked, plain + 0.5 * expect) and parts["rank"] == pytest.approx(float(expect))
