"""neural-router: send each LLM request to the model that best fits it.

The public names below load on first use (PEP 562), so ``import neural_router`` stays light: it pulls
in neither torch nor the model code until ``Router`` (or another name) is asked for.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neural_router.inference.interface import Predictions, RequestFeatures
    from neural_router.policy.routing import Constraints, Preferences
    from neural_router.pool import ModelPool, ModelSpec
    from neural_router.router import Router, RouteResult

_PUBLIC = {
    "Router": "neural_router.router",
    "RouteResult": "neural_router.router",
    "ModelPool": "neural_router.pool",
    "ModelSpec": "neural_router.pool",
    "Predictions": "neural_router.inference.interface",
    "RequestFeatures": "neural_router.inference.interface",
    "Preferences": "neural_router.policy.routing",
    "Constraints": "neural_router.policy.routing",
}

__all__ = list(_PUBLIC)

try:  # the one source of the version is pyproject.toml, read from the installed distribution
    __version__ = version("neural-router")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name in this module."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'neural_router' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
