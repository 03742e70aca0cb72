"""Shared fixtures: a tiny synthetic pool and data set, and a tiny randomly initialised router
(trained for a couple of epochs and exported to ONNX) for fast unit tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

TINY_POOL = {"models": [
    {"name": "big", "input_price_per_1m": 10.0, "output_price_per_1m": 30.0, "ttft_ms": 600,
     "output_tokens_per_s": 40, "context_window": 4096, "modalities": ["text", "image"],
     "endpoint": None, "aliases": ["big-alias"]},
    {"name": "mid", "input_price_per_1m": 1.0, "output_price_per_1m": 2.0, "ttft_ms": 300,
     "output_tokens_per_s": 80, "context_window": 2048},
    {"name": "small", "input_price_per_1m": 0.1, "output_price_per_1m": 0.2, "ttft_ms": 100,
     "output_tokens_per_s": 150, "context_window": 512},
]}

TOPICS = {"math": (1.0, 0.3, 0.0), "code": (1.0, 1.0, 0.2), "chat": (1.0, 1.0, 1.0)}
WORDS = {"math": "integral derivative equation solve prime number sum",
         "code": "python function class loop return list string",
         "chat": "hello weather movie friend holiday food music"}


def tiny_encoder_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=128)


def make_long_rows(n: int = 90, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        topic = list(TOPICS)[i % 3]
        words = WORDS[topic].split()
        prompt = f"{topic} question {i}: " + " ".join(rng.choice(words) for _ in range(rng.randint(5, 30)))
        for model, p in zip(("big", "mid", "small"), TOPICS[topic]):
            rows.append({"prompt": prompt, "model": model, "score": float(rng.random() < p),
                         "cost_usd": None, "latency_ms": None,
                         "output_tokens": {"big": 80, "mid": 40, "small": 20}[model] + rng.randint(0, 10),
                         "source": topic})
    return rows


@pytest.fixture(scope="session")
def tiny_pool_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("pool") / "models.yaml"
    p.write_text(yaml.safe_dump(TINY_POOL))
    return p


@pytest.fixture(scope="session")
def tiny_data_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("data") / "outcomes.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in make_long_rows()) + "\n")
    return p


@pytest.fixture(scope="session")
def tiny_train_config(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "train.yaml"
    p.write_text(yaml.safe_dump({"max_length": 64, "head_tokens": 8, "freeze_layers": 1, "hidden": 32,
                                 "encoder_layers": 0,  # 0 = all of the tiny encoder's layers
                                 "epochs": 3, "batch_size": 16, "lr_head": 3e-3, "lr_encoder": 1e-3,
                                 "data": {"val_fraction": 0.25}}))
    return p


@pytest.fixture(scope="session")
def tiny_trained_dir(tmp_path_factory, tiny_data_file, tiny_pool_file, tiny_train_config) -> Path:
    from neural_router.training.train import run_train

    out = tmp_path_factory.mktemp("router") / "trained"
    return run_train([str(tiny_data_file)], out, tiny_train_config, tiny_pool_file,
                     encoder_config=tiny_encoder_config(), progress=False)


@pytest.fixture(scope="session")
def tiny_router_dir(tmp_path_factory, tiny_trained_dir) -> Path:
    """A tiny router exported to ONNX (fp32 + int8): what `predict` and the service load."""
    from neural_router.inference.export import export_onnx

    out = tmp_path_factory.mktemp("router") / "onnx"
    export_onnx(tiny_trained_dir, out, int8=True)
    return out
