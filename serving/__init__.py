"""HTTP serving of an exported router: routing API, dynamic batching, OpenAI-compatible proxy."""

from serving.app import create_app, serve
from serving.config import ServeSettings, load_settings

__all__ = ["ServeSettings", "create_app", "load_settings", "serve"]
