"""Candidate pool: the models a router can choose between, with prices, speed and capabilities.

Loaded from YAML (the packaged default is ``neural_router/configs/models.yaml``) and validated with
pydantic. Observed costs and latencies in the training data take precedence over these profiles;
the profiles fill in where nothing was measured and turn predicted output tokens into USD and
milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from neural_router.validation import describe

Modality = Literal["text", "image", "audio", "tools"]


class ModelSpec(BaseModel):
    """One candidate model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Canonical name, as in the training data.")
    input_price_per_1m: float = Field(ge=0, description="USD per 1M prompt tokens.")
    output_price_per_1m: float = Field(ge=0, description="USD per 1M completion tokens.")
    ttft_ms: float = Field(default=500.0, ge=0, description="Typical time to first token, ms.")
    output_tokens_per_s: float = Field(default=50.0, gt=0, description="Typical decode speed.")
    context_window: int = Field(default=8192, gt=0, description="Prompt + output tokens it can hold.")
    modalities: tuple[Modality, ...] = Field(default=("text",), description="Input kinds it accepts.")
    endpoint: str | None = Field(default=None, description="OpenAI-compatible base URL (…/v1).")
    api_model: str | None = Field(default=None, description="Model name to send to the endpoint.")
    api_key_env: str | None = Field(default=None, description="Env var holding the endpoint's key.")
    aliases: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _text_always(self) -> "ModelSpec":
        if "text" not in self.modalities:
            raise ValueError(f"model {self.name!r}: modalities must include 'text'")
        return self

    def cost_usd(self, input_tokens, output_tokens):
        """USD of a call with these token counts (scalars or arrays, broadcast), at the list prices."""
        return (np.asarray(input_tokens) * self.input_price_per_1m
                + np.asarray(output_tokens) * self.output_price_per_1m) / 1e6

    def latency_ms(self, output_tokens):
        """Milliseconds to the last token: time to first token plus decoding at the typical speed."""
        return self.ttft_ms + np.asarray(output_tokens) / self.output_tokens_per_s * 1000.0


class ModelPool(BaseModel):
    """An ordered list of candidates; order is the column order of every prediction array."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    models: tuple[ModelSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> "ModelPool":
        seen: dict[str, str] = {}
        for m in self.models:
            for key in (m.name, *m.aliases):
                if key in seen:
                    raise ValueError(f"name or alias {key!r} is used by both {seen[key]!r} and {m.name!r}")
                seen[key] = m.name
        return self

    # ---- lookup -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def __len__(self) -> int:
        return len(self.models)

    def resolve(self, name: str) -> str | None:
        """Canonical name for a name or alias, or None if the pool does not know it."""
        for m in self.models:
            if name == m.name or name in m.aliases:
                return m.name
        return None

    def index(self, name: str) -> int:
        canonical = self.resolve(name)
        if canonical is None:
            raise KeyError(f"model {name!r} is not in the pool (known: {', '.join(self.names)})")
        return self.names.index(canonical)

    def get(self, name: str) -> ModelSpec:
        return self.models[self.index(name)]

    def subset(self, names: list[str]) -> "ModelPool":
        return ModelPool(models=tuple(self.get(n) for n in names))

    # ---- vectorised profiles ------------------------------------------------------------------
    def price_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array([m.input_price_per_1m for m in self.models], dtype=np.float64),
                np.array([m.output_price_per_1m for m in self.models], dtype=np.float64))

    def cost_usd(self, input_tokens: np.ndarray, output_tokens: np.ndarray) -> np.ndarray:
        """[N] input tokens and [N, M] output tokens -> [N, M] USD."""
        pin, pout = self.price_arrays()
        return (np.asarray(input_tokens, dtype=np.float64)[:, None] * pin
                + np.asarray(output_tokens, dtype=np.float64) * pout) / 1e6

    def latency_ms(self, output_tokens: np.ndarray) -> np.ndarray:
        """[N, M] output tokens -> [N, M] ms from the profile (time to first token + decode)."""
        ttft = np.array([m.ttft_ms for m in self.models])
        tps = np.array([m.output_tokens_per_s for m in self.models])
        return ttft + np.asarray(output_tokens, dtype=np.float64) / tps * 1000.0

    def context_windows(self) -> np.ndarray:
        return np.array([m.context_window for m in self.models], dtype=np.int64)

    def supports(self, modality: str) -> np.ndarray:
        return np.array([modality in m.modalities for m in self.models], dtype=bool)

    # ---- io -----------------------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path) -> "ModelPool":
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"model pool file {path} does not exist; pass --pool or create it "
                                    "(see configs/models.yaml)") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            raise ValueError(f"{path}: invalid model pool (see configs/models.yaml):\n{describe(e, raw)}") from None

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=False),
                                             sort_keys=False))
