"""The typed boundary between predictors and the policy: per-request, per-model estimates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


DEVICES: tuple[str, ...] = ("auto", "cuda", "cpu")
"""Where a router may be asked to run: ``auto`` = CUDA when available, else the CPU."""


@dataclass(frozen=True)
class RequestFeatures:
    """What a request carries beyond its text. Used as model inputs and as hard capability limits."""

    has_image: bool = False
    has_audio: bool = False
    has_tools: bool = False
    max_output_tokens: int | None = None

    @property
    def modalities(self) -> frozenset[str]:
        mods = {"text"}
        if self.has_image:
            mods.add("image")
        if self.has_audio:
            mods.add("audio")
        if self.has_tools:
            mods.add("tools")
        return frozenset(mods)


@dataclass
class Predictions:
    """Estimates for N requests x M models; columns follow ``models`` (the router's pool order)."""

    models: list[str]
    quality: np.ndarray        # [N, M] expected score in [0, 1] (P(success) for 0/1 scores)
    cost_usd: np.ndarray       # [N, M] expected cost of the call
    latency_ms: np.ndarray     # [N, M] expected end-to-end latency
    output_tokens: np.ndarray  # [N, M] expected completion length
    input_tokens: np.ndarray   # [N] prompt length in the router's tokens (before truncation)
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # [N]

    def __len__(self) -> int:
        return int(self.quality.shape[0])

    def row(self, i: int) -> "Predictions":
        s = slice(i, i + 1)
        return Predictions(self.models, self.quality[s], self.cost_usd[s], self.latency_ms[s],
                           self.output_tokens[s], self.input_tokens[s],
                           self.truncated[s] if len(self.truncated) else np.zeros(1, dtype=bool))

    def as_dicts(self) -> list[dict[str, dict[str, float]]]:
        """One ``{model: {"quality", "cost_usd", "latency_ms"}}`` mapping per request."""
        out = []
        for i in range(len(self)):
            out.append({m: {"quality": float(self.quality[i, j]),
                            "cost_usd": float(self.cost_usd[i, j]),
                            "latency_ms": float(self.latency_ms[i, j])}
                        for j, m in enumerate(self.models)})
        return out


class Predictor(Protocol):
    """Anything that turns prompts into Predictions (PyTorch model, ONNX Runtime session, ...).

    This package's predictors also name what runs: ``model_file`` (e.g. ``router.int8.onnx``,
    ``model.safetensors``) and ``precision`` (``fp32``, ``int8`` or ``fp16``); other predictors may
    lack them, so readers use ``getattr(predictor, name, None)``."""

    models: list[str]
    version: str
    provider: str  # e.g. "torch-cpu", "CUDAExecutionProvider", "CPUExecutionProvider"

    def predict(self, prompts: list[str],
                features: list[RequestFeatures] | None = None) -> Predictions: ...
