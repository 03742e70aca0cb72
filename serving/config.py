"""Service settings: ``configs/serve.yaml`` overridden by ``NEURAL_ROUTER_*`` environment variables.

Precedence (highest first): keyword arguments, environment variables (prefix ``NEURAL_ROUTER_``,
nested fields joined with ``__``, e.g. ``NEURAL_ROUTER_PRESETS__CHEAP__COST_WEIGHT=2``), the YAML
file given to :func:`load_settings`, then the defaults below. Nested values merge: such a variable
changes that one value of the file's presets, or of the built-in ones when the file (or no file)
defines none. Unknown keys are rejected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from neural_router.policy.exploration import ExplorationConfig
from neural_router.policy.routing import DEFAULT_PRESET, PRESETS, Preferences
from neural_router.validation import describe

Device = Literal["auto", "cuda", "cpu"]
_DEFAULT_WEIGHTS = Preferences()  # the policy's defaults are the schema's defaults


class PresetPreferences(BaseModel):
    """Named weights for ``model: "router:<preset>"`` and ``"preset"`` in /v1/route requests
    (the schema of :class:`neural_router.policy.routing.Preferences`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quality_weight: float = Field(default=_DEFAULT_WEIGHTS.quality_weight, ge=0, allow_inf_nan=False)
    cost_weight: float = Field(default=_DEFAULT_WEIGHTS.cost_weight, ge=0, allow_inf_nan=False)
    latency_weight: float = Field(default=_DEFAULT_WEIGHTS.latency_weight, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _not_all_zero(self) -> "PresetPreferences":
        if self.quality_weight == self.cost_weight == self.latency_weight == 0:
            raise ValueError("at least one of quality_weight, cost_weight, latency_weight must be > 0")
        return self

    def to_preferences(self) -> Preferences:
        return Preferences(**self.model_dump())


class EndpointOverride(BaseModel):
    """Replaces the endpoint fields of one pool model (keyed by model name or alias)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str | None = Field(default=None, description="OpenAI-compatible base URL (.../v1).")
    api_model: str | None = Field(default=None, description="Model name sent to the endpoint.")
    api_key_env: str | None = Field(default=None, description="Env var holding the bearer key.")

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"endpoint must start with http:// or https://, got {v!r}")
        return v


class ExplorationSettings(BaseModel):
    """Exploration on top of the greedy policy (see ``neural_router/policy/exploration.py``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["none", "epsilon_greedy", "thompson"] = Field(
        default="none", description="none = always the greedy choice (propensity 1).")
    epsilon: float = Field(default=0.05, ge=0, le=1, allow_inf_nan=False,
                           description="epsilon_greedy: share of requests sent to a uniform choice.")
    thompson_pseudo_count: float = Field(
        default=20.0, gt=0, allow_inf_nan=False,
        description="thompson: quality ~ Beta(q*n, (1-q)*n); smaller n explores more.")
    thompson_evidence_half: float | None = Field(
        default=None, gt=0, allow_inf_nan=False,
        description="thompson: scale n per model by the router's evidence, n = max(2, "
                    "thompson_pseudo_count * e / (e + this)) with e the outcomes of that model it was "
                    "trained on (training_metrics.json); None = the same n for every model.")
    explore_with_constraints: bool = Field(
        default=False, description="Also explore requests with min_quality/max_cost_usd/"
                                   "max_latency_ms (only among models predicted to meet them).")
    boost_models: tuple[str, ...] = Field(
        default=(), description="Cold start: pool models (names or aliases) that get extra traffic.")
    boost_epsilon: float = Field(default=0.2, ge=0, le=1, allow_inf_nan=False,
                                 description="Share of requests sent to a boosted model when one is eligible.")
    margin: float | None = Field(
        default=None, ge=0, allow_inf_nan=False,
        description="Explore only among models whose utility is within this margin of the greedy "
                    "choice's (near-ties); None = all eligible models.")
    propensity_draws: int = Field(default=200, ge=1, le=100_000,
                                  description="thompson: Monte Carlo draws estimating the propensity.")
    seed: int | None = Field(default=None, description="Seed of the exploration RNG (None = random).")

    @model_validator(mode="after")
    def _valid(self) -> "ExplorationSettings":
        self.to_config()
        return self

    def to_config(self, boost_models: tuple[str, ...] | None = None,
                  evidence: dict[str, float] | None = None) -> ExplorationConfig:
        fields = self.model_dump(exclude={"seed"})
        if boost_models is not None:
            fields["boost_models"] = boost_models
        if evidence is not None:
            fields["evidence"] = evidence
        return ExplorationConfig(**fields)


DEFAULT_PRESETS: dict[str, PresetPreferences] = {
    name: PresetPreferences(quality_weight=p.quality_weight, cost_weight=p.cost_weight,
                            latency_weight=p.latency_weight) for name, p in PRESETS.items()}


class ServeSettings(BaseSettings):
    """Everything the router service can be configured with (see ``configs/serve.yaml``)."""

    model_config = SettingsConfigDict(env_prefix="NEURAL_ROUTER_", env_nested_delimiter="__",
                                      extra="forbid", validate_default=True)

    _yaml_data: ClassVar[dict[str, Any]] = {}  # set on a subclass by load_settings

    host: str = Field(default="127.0.0.1", description="Bind address for `serve`.")
    port: int = Field(default=8000, ge=0, le=65535)
    device: Device = Field(default="auto", description="auto = CUDA if available, else CPU.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = Field(default=True, description="uvicorn's per-request access log lines.")

    inference_threads: int | None = Field(
        default=None, ge=1, le=256, description="ONNX Runtime intra-op threads; None = its default "
                                                "(all cores). Fewer threads leave cores to the HTTP side.")
    precision: Literal["auto", "fp32", "int8", "fp16", "bf16"] = Field(
        default="auto", description="Which exported model to serve: auto = the export's default for the device "
                                    "(router.int8.onnx on CPU only when the export showed it decides like fp32, "
                                    "router.fp16.onnx on CUDA when exported), else router.onnx. A trained "
                                    "(PyTorch) folder serves fp32, fp16 or bf16.")
    int8: bool = Field(default=False, description="true = precision: int8 (the older spelling).")

    # dynamic batching
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="1 disables batching.")
    max_wait_ms: float = Field(
        default=0.0, ge=0, le=10_000, allow_inf_nan=False,
        description="How long the first queued prompt waits for company. 0 = opportunistic: a batch "
                    "starts at once and whatever queued meanwhile forms the next one.")
    max_queue: int = Field(default=1024, ge=1, description="Queued prompts before 429.")
    request_timeout_s: float = Field(default=10.0, gt=0, allow_inf_nan=False, description="Then 504.")

    # input limits
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Larger bodies get 413.")
    max_prompt_chars: int = Field(default=200_000, ge=1, description="Longer prompt text gets 422.")
    max_batch_requests: int = Field(default=256, ge=1,
                                    description="Items per batch/predict call (at most max_queue).")
    max_prompt_tokens: int | None = Field(
        default=None, ge=8,
        description="Router tokens kept per prompt (head+tail truncation, as in training); "
                    "None = the router's own max_length.")

    # routing
    default_preset: str = Field(default=DEFAULT_PRESET, description="Preset used when none is given.")
    presets: dict[str, PresetPreferences] = Field(default_factory=lambda: dict(DEFAULT_PRESETS))

    # security
    api_key: SecretStr | None = Field(
        default=None, description="If set, every endpoint except /healthz and /readyz requires "
                                  "`Authorization: Bearer <api_key>`.")

    # OpenAI-compatible proxy
    backend_timeout_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    backend_connect_timeout_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    endpoints: dict[str, EndpointOverride] = Field(
        default_factory=dict, description="Per-model endpoint overrides (name or alias -> fields).")

    # decision log, feedback and exploration
    feedback_url: str | None = Field(
        default=None, description="SQLAlchemy URL (sqlite:///path.db, postgresql://...) or file path "
                                  "of the decision/feedback store. None = no logging, /v1/feedback "
                                  "answers 503.")
    retention: Literal["full", "hash"] = Field(
        default="full", description="full = store prompts (and proxied answers); hash = only the "
                                    "prompt's SHA-256, no text.")
    score_range: tuple[float, float] = Field(
        default=(0.0, 1.0), description="Scale of the scores clients send to /v1/feedback "
                                        "(stored rescaled to [0, 1]).")
    feedback_timeout_s: float = Field(
        default=5.0, gt=0, allow_inf_nan=False,
        description="Longest a request waits for its decision to be written; then it is answered "
                    "anyway (the write continues in the background).")
    exploration: ExplorationSettings = Field(default_factory=ExplorationSettings)
    scorer: dict[str, Any] | str | None = Field(
        default=None, description="Scorer spec (neural_router.feedback.scoring.load_scorer) that grades "
                                  "proxied answers of requests carrying a reference.")
    allow_unsandboxed_code: bool = Field(
        default=False, description="Accept that a code_tests scorer runs model-written code without "
                                   "a sandbox when bubblewrap is missing or fails (or its spec says "
                                   "sandbox: none). False = the service refuses to start instead.")
    admin_key: SecretStr | None = Field(
        default=None, description="Bearer key of /admin/reload and /admin/rollback; None disables them.")

    # fleet: replicas sharing feedback_url serve the router its registry names (docs/fleet.md)
    registry_poll_s: float | None = Field(
        default=5.0, gt=0, le=3600, allow_inf_nan=False,
        description="Seconds between reads of the router registry in the feedback_url database; the "
                    "replica then serves the router it names, and /admin/reload and /admin/rollback "
                    "record there for every replica. None (or no feedback_url) = this replica alone.")
    replica_id: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="This replica's name in /healthz, metrics and registry entries; None = "
                    "<hostname>-<pid>.")

    @field_validator("api_key", "admin_key")
    @classmethod
    def _empty_key_is_none(cls, v: SecretStr | None) -> SecretStr | None:
        return None if v is not None and not v.get_secret_value() else v

    @field_validator("feedback_url", "scorer")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("score_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"score_range must be two finite numbers with low < high, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _int8_is_a_precision(self) -> "ServeSettings":
        if self.int8 and self.precision not in ("auto", "int8"):
            raise ValueError(f"int8: true means precision: int8; it contradicts precision: {self.precision}")
        if self.int8:
            self.precision = "int8"
        return self

    @model_validator(mode="after")
    def _check_presets(self) -> "ServeSettings":
        if not self.presets:
            raise ValueError("presets must define at least one preset")
        if self.default_preset not in self.presets:
            raise ValueError(f"default_preset {self.default_preset!r} is not one of the presets "
                             f"({', '.join(sorted(self.presets))})")
        bad = [n for n in self.presets if not n or ":" in n or n != n.strip()]
        if bad:
            raise ValueError(f"preset names must be non-empty and contain no ':' or spaces: {bad}")
        return self

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_data = getattr(settings_cls, "_yaml_data", {})
        yaml_source = _YamlSource(settings_cls, yaml_data)
        preset_defaults = _DefaultPresetsSource(
            settings_cls, lambda: "presets" in yaml_data or "presets" in init_settings())
        return init_settings, env_settings, yaml_source, preset_defaults


class _YamlSource(PydanticBaseSettingsSource):
    """Values read from the YAML config file (already parsed by :func:`load_settings`)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class _DefaultPresetsSource(PydanticBaseSettingsSource):
    """The built-in presets as the lowest-priority source, so that an environment variable naming one
    nested value (``NEURAL_ROUTER_PRESETS__CHEAP__COST_WEIGHT=2``) is merged into them instead of
    replacing the whole map (pydantic-settings merges sources key by key, but never into a field's
    ``default_factory``). A ``presets`` map from the YAML file or a keyword argument replaces the
    built-in presets; the environment is then merged into that map."""

    def __init__(self, settings_cls: type[BaseSettings], replaced: Callable[[], bool]) -> None:
        super().__init__(settings_cls)
        self._replaced = replaced

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if self._replaced():
            return {}
        return {"presets": {name: p.model_dump() for name, p in DEFAULT_PRESETS.items()}}


class ConfigError(ValueError):
    """The config file or the environment holds invalid settings."""


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> ServeSettings:
    """Settings from ``config_file`` (YAML, optional), then the environment, then ``overrides``.

    ``overrides`` whose value is None are ignored (so CLI flags left unset do not clobber the file).
    Raises :class:`ConfigError` with a readable message for a missing or invalid file.
    """
    data: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist (see configs/serve.yaml)") from None
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings, "
                              f"got {type(raw).__name__}")
        data = raw or {}
    cls = type("ServeSettingsFromFile", (ServeSettings,), {"_yaml_data": data})
    try:
        return cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        where = f"config file {config_file} / " if config_file else ""
        raise ConfigError(f"invalid settings ({where}NEURAL_ROUTER_* environment):\n{describe(e, data)}") from None
