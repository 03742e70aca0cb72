"""Helpers of the training tests: the tiny settings, data and logged traffic."""

from __future__ import annotations

import random

import numpy as np

from neural_router.data.dataset import DataConfig, load_routing_data
from neural_router.feedback.store import FeedbackStore
from neural_router.inference.interface import Predictions
from neural_router.pool import ModelPool

from tests.conftest import TOPICS, WORDS

# TrainConfig fields of a fast router on the tiny random encoder (all of its 2 layers)
CFG = dict(max_length=64, head_tokens=8, freeze_layers=1, encoder_layers=None, hidden=32, epochs=2,
           batch_size=16, lr_head=3e-3, lr_encoder=1e-3)


def tiny(tiny_data_file, tiny_pool_file):
    """(pool, dataset) of the tiny fixtures."""
    pool = ModelPool.from_yaml(tiny_pool_file)
    return pool, load_routing_data([str(tiny_data_file)], pool, DataConfig())


def preds(quality: np.ndarray, models: list[str]) -> Predictions:
    """Predictions with the given qualities and fixed per-model costs and latencies."""
    n, m = quality.shape
    return Predictions(models, quality, np.tile([0.02, 0.002, 0.0002], (n, 1)),
                       np.tile([900.0, 400.0, 150.0], (n, 1)), np.full((n, m), 50.0),
                       np.full(n, 20), np.zeros(n, bool))


def log_traffic(store: FeedbackStore, router_dir, n: int, epsilon: float, seed: int = 1):
    """Route synthetic prompts with the tiny router, epsilon-greedy, and add the true outcome."""
    from neural_router import Router
    from neural_router.feedback.offpolicy import epsilon_greedy_probs, sample_actions, utilities

    rng = random.Random(seed)
    router = Router.from_pretrained(router_dir)
    prompts, topics = [], []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        words = WORDS[topic].split()
        prompts.append(f"{topic} logged {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(5, 20))))
        topics.append(topic)
    pr = router.predict(prompts)
    u = utilities(pr.quality, pr.cost_usd, pr.latency_ms, 1.0, 0.3, 0.0)
    a, p = sample_actions(epsilon_greedy_probs(u, epsilon), seed)
    for i, prompt in enumerate(prompts):
        model = router.models[a[i]]
        store.log_decision(request_id=f"r{seed}-{i}", prompt=prompt, model=model, predictions=pr.row(i),
                           router_version=router.version, propensity=float(p[i]),
                           preferences={"quality_weight": 1.0, "cost_weight": 0.3},
                           exploration=f"epsilon_greedy({epsilon})", input_tokens=int(pr.input_tokens[i]))
        prob = 0.9 if model == "newbie" else TOPICS[topics[i]][["big", "mid", "small"].index(model)]
        store.add_feedback(f"r{seed}-{i}", float(rng.random() < prob), cost_usd=float(pr.cost_usd[i, a[i]]))
