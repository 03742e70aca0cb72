"""Python API: ``Router.from_pretrained(dir)``, ``.predict(prompts)``, ``.route(prompt, preferences)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neural_router.policy.routing import Capabilities, Constraints, Decision, Preferences, route
from neural_router.pool import ModelPool
from neural_router.inference.interface import Predictions, RequestFeatures


@dataclass
class RouteResult:
    """What :meth:`Router.route` returns: the policy's decision, the estimates it was made on and
    whether the prompt was truncated to fit the router's token limit (head and tail kept)."""

    decision: Decision
    predictions: Predictions  # one row: every candidate's estimates
    truncated: bool

    @property
    def model(self) -> str:
        return self.decision.model

    def to_dict(self) -> dict:
        """JSON-ready: the choice, why, fallbacks, feasibility and the per-model estimates."""
        d = self.decision
        return {"model": d.model, "reason": d.reason, "fallbacks": list(d.fallbacks),
                "feasible": d.feasible, "violated": list(d.violated), "truncated": self.truncated,
                "predictions": self.predictions.as_dicts()[0]}


def _as(cls, value):
    """``value`` as a ``cls`` dataclass: unchanged if it is one (or None), built from a dict's fields."""
    if value is None or isinstance(value, cls):
        return value
    if isinstance(value, dict):
        try:
            return cls(**value)
        except TypeError as e:   # an unknown field
            raise ValueError(f"{cls.__name__}: {e}") from None
    raise TypeError(f"expected {cls.__name__} or a dict of its fields, got {type(value).__name__}")


class Router:
    """A trained (PyTorch) or exported (ONNX) router plus the routing policy.

    ``pool`` (default: the folder's own ``models.yaml``) supplies prices and capabilities; only the
    models the predictor knows are kept, in its column order."""

    def __init__(self, predictor, pool: ModelPool | None = None):
        self.predictor = predictor
        self.pool = (pool or predictor.pool).subset(predictor.models)
        self.capabilities = Capabilities.from_pool(self.pool)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "auto", int8: bool = False,
                        pool: ModelPool | None = None, precision: str = "auto") -> "Router":
        """Load a trained (PyTorch) or exported (ONNX) router folder; the arguments and errors are
        those of :func:`neural_router.inference.predictors.load_predictor`, imported here so that
        importing this module does not import torch."""
        from neural_router.inference.predictors import load_predictor

        return cls(load_predictor(directory, device=device, pool=pool, int8=int8, precision=precision))

    @property
    def models(self) -> list[str]:
        return self.predictor.models

    @property
    def version(self) -> str:
        return self.predictor.version

    def predict(self, prompts: list[str], features: list[RequestFeatures] | None = None) -> Predictions:
        """Per-model quality, USD cost and latency (ms) estimates, one row per prompt."""
        return self.predictor.predict(prompts, features)

    def decide(self, predictions: Predictions, i: int, preferences: Preferences | None = None,
               constraints: Constraints | None = None, features: RequestFeatures | None = None) -> Decision:
        """The policy's choice for row ``i`` of ``predictions`` (:func:`neural_router.policy.routing.route`);
        raises NoEligibleModelError when no model meets the hard limits."""
        return route(self.models, predictions.quality[i], predictions.cost_usd[i], predictions.latency_ms[i],
                     preferences or Preferences(), constraints or Constraints(), self.capabilities,
                     features or RequestFeatures(), int(predictions.input_tokens[i]))

    def route(self, prompt: str, preferences: Preferences | dict | None = None,
              constraints: Constraints | dict | None = None, features: RequestFeatures | dict | None = None
              ) -> RouteResult:
        """Route one prompt. Preferences, constraints and features may be given as their dataclasses or
        as dicts of their fields, e.g. ``route("...", {"cost_weight": 0.3}, {"max_latency_ms": 2000})``."""
        if not isinstance(prompt, str):
            raise TypeError(f"route() takes one prompt string, not {type(prompt).__name__}; "
                            "predict() takes a list")
        if not prompt.strip():
            raise ValueError("the prompt is empty: give the text to route")
        preferences, constraints, features = (_as(Preferences, preferences), _as(Constraints, constraints),
                                              _as(RequestFeatures, features))
        preds = self.predict([prompt], [features or RequestFeatures()])
        decision = self.decide(preds, 0, preferences, constraints, features)
        return RouteResult(decision, preds, bool(preds.truncated[0]))
