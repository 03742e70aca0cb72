"""HTTP serving of an exported router: routing API, dynamic batching, OpenAI-compatible proxy."""

from neural_router.serving.api.app import create_app, serve
from neural_router.serving.config import ServeSettings, load_settings

__all__ = ["ServeSettings", "create_app", "load_settings", "serve"]
