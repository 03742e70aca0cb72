"""The trust region on the policy."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from neural_router.feedback.store import FeedbackStore
from neural_router.modeling.model import RouterModel
from neural_router.training.update import run_update
from neural_router.training.update.datasets import align_models
from neural_router.training.update.heads import model_from_parent
from neural_router.training.update.promotion import policy_probs
from neural_router.training.update.trust_region import largest_scale, parent_state_like, share_shift

from tests.training.helpers import log_traffic, tiny

def test_share_shift_and_largest_scale():
    a = np.eye(3)[[0, 0, 1, 2]]                 # shares 0.5, 0.25, 0.25
    assert share_shift(a, a) == 0.0
    assert share_shift(a, a[[1, 0, 3, 2]]) == 0.0            # requests swap models: no share moves
    assert share_shift(a, np.eye(3)[[1, 1, 1, 1]]) == pytest.approx(0.75)
    assert share_shift(a[:0], a[:0]) == 0.0
    calls = []

    def shift_at(t):
        calls.append(t)
        return 0.8 * t

    t, s, full = largest_scale(shift_at, 0.3)
    assert full == 0.8 and s == pytest.approx(0.8 * t) and s <= 0.3
    assert 0.375 - 2 ** -7 <= t <= 0.375 and len(calls) == 8       # 1 + 7 bisection steps
    assert largest_scale(shift_at, 0.9) == (1.0, 0.8, 0.8)         # inside the region: unchanged
    assert largest_scale(lambda t: 1.0, 0.5)[:2] == (0.0, 0.0)     # any move too far: no change


def test_parent_state_like_keeps_a_new_members_rows(tiny_trained_dir, tiny_data_file, tiny_pool_file):
    parent = RouterModel.from_pretrained(tiny_trained_dir)
    _, ds = tiny(tiny_data_file, tiny_pool_file)
    rc = parent.config
    models = ["newbie"] + list(rc.models)[::-1]      # a new member first, the known models reordered
    rc = replace(rc, models=models, binary=[True] + rc.binary[::-1],
                 latency_learned=[False] + rc.latency_learned[::-1], cost_scale=[1.0] + rc.cost_scale[::-1],
                 default_output_tokens=[99.0] + rc.default_output_tokens[::-1])
    child = model_from_parent(rc, parent, align_models(ds, models))
    with torch.no_grad():
        for p in child.parameters():
            p.add_(1.0)                               # an update that moved every weight
    start = parent_state_like(parent, child)
    assert torch.equal(start["trunk.1.weight"], parent.trunk[1].weight)
    for j, m in enumerate(models[1:], 1):             # known rows by name, from the parent
        i = parent.config.models.index(m)
        assert torch.equal(start["quality.weight"][j], parent.quality.weight[i])
        assert torch.equal(start["latency.bias"][j], parent.latency.bias[i])
    assert torch.equal(start["quality.weight"][0], child.quality.weight[0])   # the new member: its own


def test_run_update_max_shift_caps_the_traffic_an_update_moves(tiny_trained_dir, tmp_path):
    from neural_router import Router

    url = f"sqlite:///{tmp_path / 'fb.db'}"
    with FeedbackStore.from_url(url) as store:
        log_traffic(store, tiny_trained_dir, 120, 0.5)
        prompts = [d.prompt for d, _ in store.iter_logged(chosen_only=True)]
    kw = dict(preferences={"cost_weight": 0.3}, overrides={"epochs": 3, "lr_head": 0.05}, n_boot=50,
              interpolate=1.0, head_refit=None)   # a fine-tune that moves a lot of traffic
    free = run_update(tiny_trained_dir, url, tmp_path / "free", **kw)
    capped = run_update(tiny_trained_dir, url, tmp_path / "capped", max_shift=0.02, **kw)
    assert free["trust_region"] is None
    tr = capped["trust_region"]
    tm = json.loads((Path(capped["router_dir"]) / "training_metrics.json").read_text())
    assert tm["update"]["trust_region"] == tr and tr["n_requests"] == 120 and tr["max_shift"] == 0.02

    def routed(d):
        r = Router.from_pretrained(d)
        w = tuple(np.full(len(prompts), x) for x in (1.0, 0.3, 0.0))
        return policy_probs(r.predict(prompts), r.models, r.pool, w)

    parent = routed(tiny_trained_dir)
    moved = share_shift(parent, routed(free["router_dir"]))
    assert moved > 0.02                                  # the unconstrained update moves traffic ...
    assert tr["shift_unscaled"] == pytest.approx(moved, abs=1e-9) and tr["scale"] < 1.0
    assert share_shift(parent, routed(capped["router_dir"])) == pytest.approx(tr["shift"])   # ... the capped one
    assert tr["shift"] <= 0.02                                                               # no more than allowed
    with pytest.raises(ValueError, match=r"max_shift: Input should be greater than 0"):
        run_update(tiny_trained_dir, url, tmp_path / "out", max_shift=0.0)
