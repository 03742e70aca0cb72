"""HTTP serving of an exported router: ``engine`` (batched prediction, routing, decision log; no
HTTP) and ``api`` (the FastAPI app, its routes, guards and the OpenAI-compatible proxy).

The names below are imported on first use, so that importing the engine does not load the web stack.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeSettings", "create_app", "load_settings", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "serve"):
        from neural_router.serving.api import app

        return getattr(app, name)
    if name in ("ServeSettings", "load_settings"):
        from neural_router.serving import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
