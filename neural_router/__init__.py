"""neural-router: send each LLM request to the model that best fits it."""

from .pool import ModelPool, ModelSpec
from .predictions import Predictions, RequestFeatures
from .policy import Constraints, Preferences
from .router import Router, RouteResult

__all__ = ["Router", "RouteResult", "ModelPool", "ModelSpec", "Predictions", "RequestFeatures",
           "Preferences", "Constraints"]
__version__ = "0.1.0"
