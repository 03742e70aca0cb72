"""The default configuration files (installed as ``neural_router.configs``, so they ship with the package).

``models.yaml`` is the default candidate pool; ``train.yaml`` and ``serve.yaml`` list every setting of
:class:`~neural_router.training.config.TrainConfig` and :class:`~neural_router.serving.config.ServeSettings`
with its default value (the defaults themselves live in those classes; a test keeps the files equal to them).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def config_path(name: str) -> Path:
    """Path of the shipped file ``name`` (e.g. ``"models.yaml"``); FileNotFoundError if there is none."""
    path = Path(str(files(__name__) / name))
    if not path.is_file():
        raise FileNotFoundError(f"no default config {name!r} ships with neural-router (looked in {path.parent})")
    return path
