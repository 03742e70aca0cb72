"""The routing engine shared by /v1/route, /v1/predict and the proxy: input checks, batched
prediction, the policy decision and exploration. It speaks the core's types (Preferences,
Constraints, RequestFeatures, Predictions); no HTTP here: errors are typed exceptions the API maps.

The loaded router lives in a :class:`RouterState` (predictor, pool, capabilities). A request takes
the current state once and uses it throughout (prediction and decision), and each queued prompt
carries its state into the batcher, so swapping the state (``/admin/reload``) never mixes two
routers in one request: prompts queued before the swap are predicted by the old router."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from neural_router.inference.interface import Predictions, Predictor, RequestFeatures
from neural_router.policy.exploration import ExplorationConfig, Exploration, explore, read_evidence
from neural_router.policy.routing import Capabilities, Constraints, Decision, Preferences, route
from neural_router.pool import ModelPool

from neural_router.serving.config import EndpointOverride, ServeSettings
from neural_router.serving.engine.batching import DynamicBatcher
from neural_router.serving.engine.inputs import InputError, PresetError, PreparedPrompt, clean_text, flatten_messages
from neural_router.serving.engine.metrics import ServingMetrics

log = logging.getLogger(__name__)
WARM_UP = PreparedPrompt("warm-up", RequestFeatures())


def with_endpoint_overrides(pool: ModelPool, overrides: Mapping[str, EndpointOverride]) -> ModelPool:
    """The pool with ``endpoint``/``api_model``/``api_key_env`` replaced where the config says so."""
    if not overrides:
        return pool
    updates: dict[str, dict[str, Any]] = {}
    for key, ov in overrides.items():
        name = pool.resolve(key)
        if name is None:
            raise ValueError(f"endpoints: model {key!r} is not in the router's pool "
                             f"(known: {', '.join(pool.names)})")
        updates.setdefault(name, {}).update(ov.model_dump(exclude_unset=True))
    return ModelPool(models=tuple(m.model_copy(update=updates.get(m.name, {})) for m in pool.models))


def device_info(predictor: Predictor, requested: str) -> tuple[Literal["cuda", "cpu"], bool]:
    """(device the predictor runs on, whether CUDA was wanted but CPU is used)."""
    device: Literal["cuda", "cpu"] = "cuda" if "cuda" in str(predictor.provider).lower() else "cpu"
    fallback = requested != "cpu" and device == "cpu"
    return device, fallback or bool(getattr(predictor, "cuda_fallback", False))


def load_router(router_dir: str | Path, device: str, max_prompt_tokens: int | None = None,
                threads: int | None = None, precision: str = "auto") -> Predictor:
    """``load_predictor`` plus the ``max_prompt_tokens`` cap (never above what the router was
    trained with), inference threads and the precision (which exported model file). Raises
    ValueError (RouterLoadError) or OSError for a bad folder."""
    from neural_router.inference.predictors import load_predictor  # imported late: pulls in transformers

    predictor: Predictor = load_predictor(router_dir, device=device, threads=threads, precision=precision,
                                          max_length=max_prompt_tokens)
    return predictor


def resolve_boost_models(pool: ModelPool, names: Sequence[str]) -> tuple[str, ...]:
    """Canonical names of the exploration ``boost_models``; unknown names are an error."""
    out = []
    for n in names:
        c = pool.resolve(n)
        if c is None:
            raise ValueError(f"exploration.boost_models: model {n!r} is not in the router's pool "
                             f"(known: {', '.join(pool.names)})")
        out.append(c)
    return tuple(dict.fromkeys(out))


@dataclass(eq=False)
class RouterState:
    """One loaded router: its predictor, pool (with endpoint overrides) and exploration config."""

    predictor: Predictor
    models: list[str]
    pool: ModelPool
    capabilities: Capabilities
    exploration: ExplorationConfig
    router_dir: str | None = None
    loaded_at: float = field(default_factory=time.time)

    @classmethod
    def build(cls, predictor: Predictor, settings: ServeSettings,
              router_dir: str | None = None) -> "RouterState":
        """Validate ``predictor`` against the settings (ValueError/TypeError if they disagree)."""
        pool = getattr(predictor, "pool", None)
        if not isinstance(pool, ModelPool):
            raise TypeError("the predictor must expose its candidate pool as `.pool` (a ModelPool)")
        models = list(predictor.models)
        served = with_endpoint_overrides(pool, settings.endpoints).subset(models)
        boost = resolve_boost_models(served, settings.exploration.boost_models)
        evidence = None
        if settings.exploration.kind == "thompson" and settings.exploration.thompson_evidence_half is not None:
            if router_dir is None:
                raise ValueError("exploration.thompson_evidence_half needs the router folder (its "
                                 "training_metrics.json counts the outcomes per model); serve a folder, "
                                 "or set thompson_evidence_half to null")
            evidence = read_evidence(router_dir)
        return cls(predictor=predictor, models=models, pool=served,
                   capabilities=Capabilities.from_pool(served),
                   exploration=settings.exploration.to_config(boost, evidence), router_dir=router_dir)

    @classmethod
    def load(cls, router_dir: str, settings: ServeSettings) -> "RouterState":
        """Worker thread: load, validate and warm up a router folder (any failure -> ValueError)."""
        try:
            predictor = load_router(router_dir, settings.device, settings.max_prompt_tokens,
                                    settings.inference_threads, settings.precision)
            state = cls.build(predictor, settings, str(Path(router_dir)))
            state.predict_batch([WARM_UP])
        except (ValueError, OSError, TypeError) as e:
            raise ValueError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - whatever a broken folder makes the loaders raise
            log.exception("loading %s failed", router_dir)
            raise ValueError(f"{type(e).__name__}: {e}") from None
        return state

    @property
    def version(self) -> str:
        return str(self.predictor.version)

    def predict_batch(self, prompts: list[PreparedPrompt]) -> list[Predictions]:
        preds = self.predictor.predict([p.text for p in prompts], [p.features for p in prompts])
        if len(preds) != len(prompts):
            raise RuntimeError(f"predictor returned {len(preds)} rows for {len(prompts)} prompts")
        return [preds.row(i) for i in range(len(prompts))]


@dataclass(frozen=True)
class _Job:
    state: RouterState
    prompt: PreparedPrompt


@dataclass(frozen=True)
class Choice:
    """The policy's decision, the model actually served after exploration, and its fallbacks."""

    decision: Decision
    exploration: Exploration
    fallbacks: list[str]
    reason: str

    @property
    def model(self) -> str:
        return self.exploration.model

    @property
    def propensity(self) -> float:
        return self.exploration.propensity


class RouterService:
    """Owns the current (and previous) router state, the batcher and the exploration RNG of one app."""

    def __init__(self, predictor: Predictor, settings: ServeSettings, metrics: ServingMetrics,
                 router_dir: str | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = RouterState.build(predictor, settings, router_dir)
        self.previous: RouterState | None = None
        self.warm = False  # set once the warm-up prediction succeeded (/readyz)
        self.presets = {name: p.to_preferences() for name, p in settings.presets.items()}
        self.rng = np.random.default_rng(settings.exploration.seed)
        self._swap_lock = threading.Lock()
        self.batcher: DynamicBatcher[_Job, Predictions] = DynamicBatcher(
            self._predict_batch, max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
            on_batch=metrics.observe_batch, on_queue_depth=metrics.queue_depth.set)

    # ---- the current router (read once per request: see the module docstring) ---------------
    def swap(self, new: RouterState) -> RouterState:
        """Make ``new`` the current router; the old one becomes ``previous`` (and is returned).
        Requests that already took the old state (queued or running) finish on it."""
        with self._swap_lock:
            old, self.state, self.previous = self.state, new, self.state
        return old

    def rollback(self) -> RouterState:
        """Swap the current and the previous router; returns the one now current."""
        with self._swap_lock:
            if self.previous is None:
                raise LookupError("there is no previous router to roll back to")
            self.state, self.previous = self.previous, self.state
            return self.state

    # ---- inputs ------------------------------------------------------------------------------
    def prompt(self, text: str, *, has_image: bool = False, has_audio: bool = False,
               has_tools: bool = False, max_tokens: int | None = None,
               where: str = "prompt") -> PreparedPrompt:
        if not text.strip() and not (has_image or has_audio):
            raise InputError(f"{where} is empty")
        if len(text) > self.settings.max_prompt_chars:
            raise InputError(f"{where} has {len(text)} characters; the limit is "
                             f"{self.settings.max_prompt_chars} (max_prompt_chars)")
        return PreparedPrompt(clean_text(text), RequestFeatures(
            has_image=has_image, has_audio=has_audio, has_tools=has_tools,
            max_output_tokens=max_tokens))

    def messages_prompt(self, messages: Sequence[Mapping[str, Any]], *, tools: Sequence[Any] | None,
                        max_tokens: int | None, where: str = "messages") -> PreparedPrompt:
        text, img, aud, tool_msgs = flatten_messages(messages)
        return self.prompt(text, has_image=img, has_audio=aud, has_tools=bool(tools) or tool_msgs,
                           max_tokens=max_tokens, where=where)

    def preferences(self, preset: str | None, explicit: Preferences | None = None) -> Preferences:
        """``explicit`` if given, else the named preset (the default preset when None);
        PresetError for an unknown name."""
        if explicit is not None:
            return explicit
        name = preset or self.settings.default_preset
        if name not in self.presets:
            raise PresetError(f"unknown preset {name!r}; known presets: {', '.join(sorted(self.presets))}")
        return self.presets[name]

    def _canonical(self, state: RouterState, names: Sequence[str], field: str) -> tuple[str, ...]:
        out = []
        for n in names:
            c = state.pool.resolve(n)
            if c is None:
                raise InputError(f"constraints.{field}: unknown model {n!r}; known models: "
                                 f"{', '.join(state.models)}")
            out.append(c)
        return tuple(dict.fromkeys(out))

    def constraints(self, given: Constraints | None, *, restrict_to: Sequence[str] | None = None,
                    state: RouterState | None = None) -> Constraints:
        """``given`` with model names and aliases resolved to pool names (InputError for an unknown
        one); ``restrict_to`` intersects the allowed list."""
        st = state or self.state
        c = given or Constraints()
        allowed = self._canonical(st, c.allowed_models, "allowed_models") if c.allowed_models else None
        if restrict_to is not None:
            allowed = tuple(m for m in (allowed or st.models) if m in set(restrict_to))
            if not allowed:
                raise InputError("no allowed model has an endpoint to forward to")
        return dataclasses.replace(c, allowed_models=allowed,
                                   denied_models=self._canonical(st, c.denied_models, "denied_models"))

    # ---- prediction and decision -------------------------------------------------------------
    @staticmethod
    def _predict_batch(jobs: list[_Job]) -> list[Predictions]:
        """Worker thread: tokenise + infer a batch (one predictor call per router state in it)."""
        out: list[Predictions | None] = [None] * len(jobs)
        groups: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(id(job.state), []).append(i)
        for idx in groups.values():
            rows = jobs[idx[0]].state.predict_batch([jobs[i].prompt for i in idx])
            for i, row in zip(idx, rows):
                out[i] = row
        return out  # type: ignore[return-value]

    async def predict(self, prompts: Sequence[PreparedPrompt],
                      state: RouterState | None = None) -> list[Predictions]:
        st = state or self.state
        return await self.batcher.run([_Job(st, p) for p in prompts], self.settings.request_timeout_s)

    def decide(self, row: Predictions, prompt: PreparedPrompt, prefs: Preferences,
               constraints: Constraints, state: RouterState | None = None) -> Decision:
        """Policy decision for one-row predictions (NoEligibleModelError if nothing is eligible)."""
        st = state or self.state
        caps = st.capabilities if row.models == st.models else \
            Capabilities.from_pool(st.pool.subset(row.models))
        return route(row.models, row.quality[0], row.cost_usd[0], row.latency_ms[0], prefs,
                     constraints, caps, prompt.features, int(row.input_tokens[0]))

    def choose(self, row: Predictions, prompt: PreparedPrompt, prefs: Preferences,
               constraints: Constraints, state: RouterState | None = None) -> Choice:
        """Decision plus exploration: the model to serve, its propensity and the fallbacks
        (the other eligible models, the greedy choice first when exploration picked another)."""
        st = state or self.state
        decision = self.decide(row, prompt, prefs, constraints, st)
        ex = explore(decision, row.models, row.quality[0], row.cost_usd[0], row.latency_ms[0], prefs,
                     st.exploration, self.rng, constraints)
        reason, fallbacks = decision.reason, list(decision.fallbacks)
        if ex.explored:
            fallbacks = [decision.model, *(m for m in fallbacks if m != ex.model)]
            reason += (f"; explored: served {ex.model} instead of {decision.model} "
                       f"({ex.policy}, propensity {ex.propensity:.3g})")
        self.metrics.decisions.labels(ex.model).inc()
        outcome = "constrained" if ex.constrained else "explored" if ex.explored else "greedy"
        self.metrics.exploration.labels(st.exploration.kind, outcome).inc()
        return Choice(decision, ex, fallbacks, reason)

    def warm_up(self, state: RouterState | None = None) -> None:
        """Worker thread: one prediction so the first request does not pay for lazy initialisation."""
        (state or self.state).predict_batch([WARM_UP])
