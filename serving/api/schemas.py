"""Request and response bodies of the router API (they are the OpenAPI schema).

Every request model forbids unknown fields, except the OpenAI-compatible chat-completions body,
which passes unknown fields through to the chosen backend (OpenAI keeps adding parameters).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, model_validator
from pydantic.json_schema import SkipJsonSchema

from neural_router.policy.routing import Constraints, Preferences

Weight = Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)]
ModelName = Annotated[str, Field(min_length=1, max_length=256)]
_DEFAULT_WEIGHTS = Preferences()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- request pieces --------------------------------------------------------------------------

class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str = Field(min_length=1)
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Strict):
    data: str = Field(description="Base64-encoded audio.")
    format: str = Field(min_length=1, max_length=16, description='e.g. "wav", "mp3"')


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


ContentPart = Annotated[TextPart | ImagePart | AudioPart, Field(discriminator="type")]


class Message(_Strict):
    """An OpenAI-style chat message. Image parts set ``has_image``, audio parts ``has_audio``."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class PreferencesIn(_Strict):
    """Weights of the routing utility (cost and latency in units of quality; see the policy)."""

    quality_weight: Weight = _DEFAULT_WEIGHTS.quality_weight
    cost_weight: Weight = _DEFAULT_WEIGHTS.cost_weight
    latency_weight: Weight = _DEFAULT_WEIGHTS.latency_weight

    def to_preferences(self) -> Preferences:
        """The policy's Preferences (ValueError when every weight is 0)."""
        return Preferences(quality_weight=self.quality_weight, cost_weight=self.cost_weight,
                           latency_weight=self.latency_weight)


class ConstraintsIn(_Strict):
    """Soft limits (a best compromise is returned if no model meets them) and hard model lists."""

    min_quality: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    max_cost_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    max_latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    allowed_models: list[ModelName] | None = Field(
        default=None, min_length=1, max_length=1000, description="Only these models (names or aliases).")
    denied_models: list[ModelName] = Field(default_factory=list, max_length=1000,
                                           description="Never these models (names or aliases).")

    def to_constraints(self) -> Constraints:
        """The policy's Constraints, model names as given (the engine resolves aliases)."""
        return Constraints(min_quality=self.min_quality, max_cost_usd=self.max_cost_usd,
                           max_latency_ms=self.max_latency_ms,
                           allowed_models=None if self.allowed_models is None else tuple(self.allowed_models),
                           denied_models=tuple(self.denied_models))


_ONE_OF_PROMPT_MESSAGES: dict[str, Any] = {"oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]}


class RouteRequest(_Strict):
    """Route one request: give exactly one of ``prompt`` or ``messages``.

    ``messages`` are flattened to one text for the router: each message's text parts are joined by
    newlines (image parts become ``[image]``, audio parts ``[audio]``); a conversation with a single
    text-bearing message is routed on that text alone (as the router was trained), otherwise on
    ``"role: text"`` lines joined by newlines.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_OF_PROMPT_MESSAGES)

    prompt: Annotated[str, Field(min_length=1)] | SkipJsonSchema[None] = Field(
        default=None, description="The prompt text.")
    messages: Annotated[list[Message], Field(min_length=1, max_length=1000)] | SkipJsonSchema[None] = None
    tools: list[dict[str, Any]] | None = Field(default=None, description="Non-empty sets has_tools.")
    max_tokens: int | None = Field(default=None, ge=1, le=10_000_000,
                                   description="Output budget; models whose context cannot hold "
                                               "prompt + max_tokens are excluded.")
    preset: str | None = Field(default=None, description="Named preference preset (see /v1/models).")
    preferences: PreferencesIn | None = Field(default=None, description="Overrides the preset.")
    constraints: ConstraintsIn | None = None

    @model_validator(mode="after")
    def _exactly_one_input(self) -> "RouteRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class FeedbackRequest(_Strict):
    """How a routed request went. ``score`` is on the service's ``score_range`` scale (default
    [0, 1]) and is stored rescaled to [0, 1]; one outcome per (request, model)."""

    request_id: str = Field(min_length=1, max_length=128, description="From the routing response.")
    model: ModelName | None = Field(
        default=None, description="The model that answered (name or alias); default: the model the "
                                  "router chose (for /v1/chat/completions: the model that answered, "
                                  "the only one accepted). Must be one of the request's predicted "
                                  "models.")
    score: float = Field(strict=True, allow_inf_nan=False, description="The outcome's score.")
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=True)
    cost_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False, strict=True)
    output_tokens: int | None = Field(default=None, ge=0, le=1_000_000_000, strict=True)
    response: str | None = Field(default=None, description="The answer text (not stored when the "
                                                           "service runs with retention: hash).")


class ReloadRequest(_Strict):
    router_dir: str = Field(min_length=1, max_length=4096,
                            description="Router folder on the server (exported or trained).")


def _unvalidated(item: Any) -> Any:
    return item


# A batch item is validated on its own by /v1/route/batch (an invalid one gets its own error in the
# results instead of failing the call); the schema still documents it as a RouteRequest.
BatchItem = Annotated[Any, PlainValidator(_unvalidated, json_schema_input_type=RouteRequest)]


class BatchRouteRequest(_Strict):
    requests: list[BatchItem] = Field(
        min_length=1, description="Routed independently, in order; each item is validated on its "
                                  "own (an invalid item gets an error object in its place).")


class PredictRequest(_Strict):
    prompts: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, description="Prompt texts.")
    max_tokens: int | None = Field(default=None, ge=1, le=10_000_000)
    has_image: bool = False
    has_audio: bool = False
    has_tools: bool = False


# ---- responses -------------------------------------------------------------------------------

class ModelPrediction(BaseModel):
    quality: float = Field(description="Expected score in [0, 1].")
    cost_usd: float = Field(description="Expected cost of the call in USD.")
    latency_ms: float = Field(description="Expected end-to-end latency in ms.")


class RouteResponse(BaseModel):
    request_id: str
    model: str = Field(description="The chosen model (canonical pool name).")
    predictions: dict[str, ModelPrediction] = Field(description="Estimates for every pool model.")
    fallbacks: list[str] = Field(description="Other eligible models, best first.")
    reason: str = Field(description="Why this model; names violated soft constraints, if any.")
    router_version: str
    truncated: bool = Field(description="The prompt was longer than the router's max tokens and "
                                        "was cut (head + tail) before prediction.")
    feasible: bool = Field(description="False when no eligible model met every soft constraint.")
    violated: list[str] = Field(description="Soft constraints the chosen model breaks.")
    propensity: float = Field(description="Probability with which `model` was chosen (1 without "
                                          "exploration).")
    exploration: str = Field(description='Exploration policy that chose `model`, e.g. "greedy", '
                                         '"epsilon_greedy(0.05)".')


class BatchItemErrorInfo(BaseModel):
    type: Literal["invalid_request", "no_eligible_model"] = Field(
        description="invalid_request: the item is invalid (the message names the field and what is "
                    "wrong) or cannot be routed as given (e.g. unknown model or preset, empty "
                    "prompt); no_eligible_model: no pool model can serve it.")
    message: str = Field(description='Names the item, e.g. "requests[2]: constraints.allowed_models: '
                                     'unknown model ...".')


class BatchItemError(BaseModel):
    """A batch item that could not be routed; the other items are routed normally."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0, description="Position of the item in ``requests``.")
    error: BatchItemErrorInfo


class BatchRouteResponse(BaseModel):
    results: list[RouteResponse | BatchItemError] = Field(
        description="One entry per item of ``requests``, in order: the routing decision, or an "
                    "error object (``index``, ``error``) for an item that cannot be routed.")


class PredictResponse(BaseModel):
    router_version: str
    models: list[str]
    predictions: list[dict[str, ModelPrediction]] = Field(description="One mapping per prompt.")
    input_tokens: list[int] = Field(description="Router tokens per prompt before truncation.")
    truncated: list[bool]


class ModelInfo(BaseModel):
    name: str
    aliases: list[str]
    modalities: list[str] = Field(description="Input kinds accepted: text, image, audio, tools.")
    context_window: int
    input_price_per_1m: float
    output_price_per_1m: float
    ttft_ms: float
    output_tokens_per_s: float
    proxyable: bool = Field(description="Has an endpoint, so /v1/chat/completions can forward to it.")


class PresetInfo(PreferencesIn):
    model_config = ConfigDict(extra="ignore")


class ModelsResponse(BaseModel):
    router_version: str
    models: list[ModelInfo]
    presets: dict[str, PresetInfo]
    default_preset: str


class FleetHealth(BaseModel):
    """Where this replica stands with the router registry (docs/fleet.md)."""

    replica: str = Field(description="This replica's name (replica_id).")
    serving_version: str = Field(description="The router this replica serves.")
    registry_version: str | None = Field(description="The router the registry names (None: empty).")
    registry_entry: int | None = Field(description="Id of the registry's current entry.")
    in_sync: bool | None = Field(description="Serves the registry's router, or the registry is empty "
                                             "(None: the registry was not read yet).")
    last_error: str | None = Field(description="Why the replica does not serve the registry's router, "
                                                "or why the registry could not be read.")
    last_check: datetime | None = Field(description="Last successful read of the registry (UTC).")
    last_swap: datetime | None = Field(description="Last router swap made to follow the registry (UTC).")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    router_version: str
    provider: str = Field(description="Inference provider, e.g. CPUExecutionProvider.")
    device: Literal["cuda", "cpu"]
    requested_device: Literal["auto", "cuda", "cpu"]
    device_fallback: bool = Field(description="CUDA was wanted (auto/cuda) but CPU is used.")
    models: int
    max_length: int | None = Field(description="Router tokens kept per prompt.")
    model_file: str | None = Field(
        default=None, description="Model file loaded, e.g. router.onnx, router.fp16.onnx (CUDA), "
                                  "router.int8.onnx or model.safetensors (PyTorch).")
    precision: str | None = Field(
        default=None, description="Precision of the model file: fp32, int8, fp16 or bf16 (None: the predictor "
                                  "does not say).")
    previous_router_version: str | None = Field(
        default=None, description="The router /admin/rollback would restore.")
    exploration: str = Field(default="greedy", description="Exploration policy in force.")
    feedback: bool = Field(default=False, description="Decisions are logged and /v1/feedback is on.")
    fleet: FleetHealth | None = Field(
        default=None, description="Router registry status; None when this replica follows no registry.")


class FeedbackResponse(BaseModel):
    """The stored outcome."""

    id: int
    request_id: str
    model: str
    score: float = Field(description="Rescaled to [0, 1].")
    latency_ms: float | None
    cost_usd: float | None
    output_tokens: int | None
    response: str | None
    created_at: datetime


class AdminResponse(BaseModel):
    router_version: str = Field(description="The router now serving.")
    previous_version: str | None = Field(description="The router kept for /admin/rollback.")
    models: list[str]


class ReadyResponse(BaseModel):
    ready: bool
    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


def validation_issues(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pydantic's errors as ``{"loc", "msg", "type"}`` issues. For an optional field (``str | None``)
    pydantic reports each branch of the union: ``prompt.constrained-str: too short`` and ``prompt.none:
    Input should be None``. The None branch says nothing to a caller who sent a value, so it is left
    out and the other branches are reported at the field itself (``["body", "prompt"]``)."""
    issues = [{"loc": [p if isinstance(p, (str, int)) else str(p) for p in e.get("loc", ())],
               "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errors]
    optional = {tuple(i["loc"][:-1]) for i in issues if i["type"] == "none_required" and i["loc"]}
    out = []
    for i in issues:
        parent = tuple(i["loc"][:-1])
        if parent in optional and len(i["loc"]) > 1:
            if i["type"] == "none_required":
                continue
            i = {**i, "loc": list(parent)}
        out.append(i)
    return out


def field_path(data: Any, loc: list[str | int]) -> str:
    """``loc`` of an issue in ``data`` (the validated input) as ``messages[0].content``: pydantic puts
    the branch of a union it tried into ``loc`` (``messages.list[Message].0.content.str``); a name
    that is not a key of the object at that point is such a branch and is left out, except at the
    end, where it is a missing field."""
    parts: list[str] = []
    for k, p in enumerate(loc):
        if isinstance(p, int) and isinstance(data, list):
            parts.append(f"[{p}]")
            data = data[p] if 0 <= p < len(data) else None
        elif isinstance(data, dict) and (p in data or k == len(loc) - 1):
            parts.append(f".{p}")
            data = data.get(p)  # type: ignore[call-overload]
    return "".join(parts).lstrip(".")


def issues_text(issues: list[dict[str, Any]], data: Any) -> str:
    """Issues of :func:`validation_issues` about ``data`` as one line, each ``field.path: message``,
    e.g. ``"preferences.cost_weight: Input should be greater than or equal to 0; surprise: Extra
    inputs are not permitted"``."""
    out = []
    for i in issues:
        path = field_path(data, i["loc"])
        out.append(f"{path}: {i['msg']}" if path else i["msg"])
    return "; ".join(out)


class ErrorResponse(BaseModel):
    detail: str | list[ValidationIssue]


class OpenAIError(BaseModel):
    message: str
    type: str
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIError
    detail: str | list[ValidationIssue] | None = None


# ---- OpenAI-compatible proxy -----------------------------------------------------------------

class ChatMessage(BaseModel):
    """A chat message as OpenAI accepts it; extra fields are forwarded unchanged."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1)
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI chat-completions body. ``model`` is ``"router"``, ``"router:<preset>"`` or a pool
    model name (no routing). Fields not listed are forwarded to the backend unchanged."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, examples=["router", "router:cheap"])
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
