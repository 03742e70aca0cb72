"""The routing core shared by /v1/route, /v1/predict and the proxy: input preparation, batched
prediction and the policy decision. No HTTP here; errors are typed exceptions the app maps."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neural_router.policy import Capabilities, Constraints, Decision, Preferences, route
from neural_router.pool import ModelPool
from neural_router.predictions import Predictions, Predictor, RequestFeatures

from serving.batching import DynamicBatcher
from serving.config import EndpointOverride, ServeSettings
from serving.metrics import ServingMetrics
from serving.schemas import ConstraintsIn, PreferencesIn

log = logging.getLogger(__name__)


class InputError(ValueError):
    """The request is well-formed JSON but cannot be routed as given (answered with 422)."""


class PresetError(InputError):
    """Unknown preset name."""


@dataclass(frozen=True)
class PreparedPrompt:
    text: str
    features: RequestFeatures


def clean_text(text: str) -> str:
    """Replace lone surrogates (valid in JSON escapes, invalid UTF-8) so the tokenizer never sees them."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _content_text(content: Any) -> tuple[str, bool, bool]:
    """(text, has_image, has_audio) of one message's content: a string or a list of parts."""
    if content is None:
        return "", False, False
    if isinstance(content, str):
        return content, False, False
    texts: list[str] = []
    has_image = has_audio = False
    for part in content:
        if not isinstance(part, Mapping):
            raise InputError("message content parts must be objects with a 'type'")
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind in ("image_url", "image"):
            has_image = True
            texts.append("[image]")
        elif kind in ("input_audio", "audio"):
            has_audio = True
            texts.append("[audio]")
    return "\n".join(texts), has_image, has_audio


def flatten_messages(messages: Sequence[Mapping[str, Any]]) -> tuple[str, bool, bool, bool]:
    """Messages -> (prompt text, has_image, has_audio, has_tool_messages).

    Each message's text parts are joined by newlines (image parts read ``[image]``, audio parts
    ``[audio]``). If only one message carries any text, the prompt is that text alone (the router
    was trained on single prompts); otherwise it is ``"role: text"`` lines joined by newlines.
    Tool-role messages and assistant ``tool_calls`` count as tool use.
    """
    rendered: list[tuple[str, str]] = []
    has_image = has_audio = has_tools = False
    for m in messages:
        text, img, aud = _content_text(m.get("content"))
        has_image |= img
        has_audio |= aud
        has_tools |= m.get("role") == "tool" or bool(m.get("tool_calls"))
        if text.strip():
            rendered.append((str(m.get("role", "user")), text))
    if len(rendered) == 1:
        return rendered[0][1], has_image, has_audio, has_tools
    return "\n".join(f"{role}: {text}" for role, text in rendered), has_image, has_audio, has_tools


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


class RouterService:
    """Owns the predictor, the batcher and the (endpoint-overridden) pool of one app."""

    def __init__(self, predictor: Predictor, settings: ServeSettings, metrics: ServingMetrics) -> None:
        pool = getattr(predictor, "pool", None)
        if not isinstance(pool, ModelPool):
            raise TypeError("the predictor must expose its candidate pool as `.pool` (a ModelPool)")
        self.predictor = predictor
        self.settings = settings
        self.metrics = metrics
        self.warm = False  # set once the warm-up prediction succeeded (/readyz)
        self.models = list(predictor.models)
        self.pool = with_endpoint_overrides(pool, settings.endpoints).subset(self.models)
        self.capabilities = Capabilities.from_pool(self.pool)
        self.presets = {name: Preferences(**p.model_dump()) for name, p in settings.presets.items()}
        self.batcher: DynamicBatcher[PreparedPrompt, Predictions] = DynamicBatcher(
            self._predict_batch, max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms, max_queue=settings.max_queue,
            on_batch=metrics.observe_batch, on_queue_depth=metrics.queue_depth.set)

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

    def preferences(self, preset: str | None, explicit: PreferencesIn | None) -> Preferences:
        if explicit is not None:
            try:
                return Preferences(**explicit.model_dump())
            except ValueError as e:
                raise InputError(str(e)) from None
        name = preset or self.settings.default_preset
        if name not in self.presets:
            raise PresetError(f"unknown preset {name!r}; known presets: {', '.join(sorted(self.presets))}")
        return self.presets[name]

    def _canonical(self, names: Sequence[str], field: str) -> tuple[str, ...]:
        out = []
        for n in names:
            c = self.pool.resolve(n)
            if c is None:
                raise InputError(f"constraints.{field}: unknown model {n!r}; known models: "
                                 f"{', '.join(self.models)}")
            out.append(c)
        return tuple(dict.fromkeys(out))

    def constraints(self, given: ConstraintsIn | None, *, restrict_to: Sequence[str] | None = None) -> Constraints:
        """Policy constraints with aliases resolved; ``restrict_to`` intersects the allowed list."""
        c = given or ConstraintsIn()
        allowed = self._canonical(c.allowed_models, "allowed_models") if c.allowed_models else None
        if restrict_to is not None:
            allowed = tuple(m for m in (allowed or self.models) if m in set(restrict_to))
            if not allowed:
                raise InputError("no allowed model has an endpoint to forward to")
        try:
            return Constraints(min_quality=c.min_quality, max_cost_usd=c.max_cost_usd,
                               max_latency_ms=c.max_latency_ms, allowed_models=allowed,
                               denied_models=self._canonical(c.denied_models, "denied_models"))
        except ValueError as e:
            raise InputError(str(e)) from None

    # ---- prediction and decision -------------------------------------------------------------
    def _predict_batch(self, items: list[PreparedPrompt]) -> list[Predictions]:
        """Worker thread: tokenise + infer a batch, split into one-row Predictions."""
        preds = self.predictor.predict([p.text for p in items], [p.features for p in items])
        if len(preds) != len(items):
            raise RuntimeError(f"predictor returned {len(preds)} rows for {len(items)} prompts")
        return [preds.row(i) for i in range(len(items))]

    async def predict(self, prompts: Sequence[PreparedPrompt]) -> list[Predictions]:
        return await self.batcher.run(prompts, self.settings.request_timeout_s)

    def decide(self, row: Predictions, prompt: PreparedPrompt, prefs: Preferences,
               constraints: Constraints) -> Decision:
        """Policy decision for one-row predictions (NoEligibleModelError if nothing is eligible)."""
        caps = self.capabilities if row.models == self.models else \
            Capabilities.from_pool(self.pool.subset(row.models))
        decision = route(row.models, row.quality[0], row.cost_usd[0], row.latency_ms[0], prefs,
                         constraints, caps, prompt.features, int(row.input_tokens[0]))
        self.metrics.decisions.labels(decision.model).inc()
        return decision

    def warm_up(self) -> None:
        """Worker thread: one prediction so the first request does not pay for lazy initialisation."""
        self._predict_batch([PreparedPrompt("warm-up", RequestFeatures())])
