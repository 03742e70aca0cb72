"""neural-router: send each LLM request to the model that best fits it."""

from neural_router.pool import ModelPool, ModelSpec
from neural_router.inference.interface import Predictions, RequestFeatures
from neural_router.policy.routing import Constraints, Preferences
from neural_router.router import Router, RouteResult

__all__ = ["Router", "RouteResult", "ModelPool", "ModelSpec", "Predictions", "RequestFeatures",
           "Preferences", "Constraints"]
__version__ = "0.1.0"
