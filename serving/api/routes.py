"""The router API: /v1/route, /v1/route/batch, /v1/predict, /v1/models, /healthz, /readyz, /metrics."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from typing import Any, Literal, cast

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from neural_router.inference.interface import Predictions
from neural_router.policy.routing import Constraints, NoEligibleModelError, Preferences

from neural_router.serving.api.prometheus import CONTENT_TYPE
from neural_router.serving.api.schemas import (BatchItemError, BatchItemErrorInfo, BatchRouteRequest,
                                               BatchRouteResponse, ErrorResponse, HealthResponse, ModelInfo,
                                               ModelPrediction, ModelsResponse, PredictRequest,
                                               PredictResponse, PresetInfo, ReadyResponse, RouteRequest,
                                               RouteResponse, FleetHealth, issues_text, validation_issues)
from neural_router.serving.engine.decisions import FeedbackLog, decision_record
from neural_router.serving.engine.fleet import FleetWatcher
from neural_router.serving.engine.inputs import InputError, PreparedPrompt
from neural_router.serving.engine.service import RouterService, RouterState, device_info

_ERR = {"model": ErrorResponse}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Body is not parseable (e.g. invalid UTF-8)."},
    401: {**_ERR, "description": "Missing or wrong bearer key (when an api_key is configured)."},
    413: {**_ERR, "description": "Body larger than max_body_bytes."},
    422: {**_ERR, "description": "Invalid request, or no model can serve it."},
    429: {**_ERR, "description": "Queue full; retry after the Retry-After header's seconds."},
    503: {**_ERR, "description": "The router is starting or shutting down."},
    504: {**_ERR, "description": "No prediction within request_timeout_s."},
}
BATCH_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    422: {**_ERR, "description": "Not a batch (no `requests` list of 1 or more items) or more items "
                                 "than max_batch_requests; an invalid item or one that cannot be "
                                 "routed is answered in place, with 200."},
}
router = APIRouter()  # needs the API key when one is configured
health_router = APIRouter()  # /healthz and /readyz: always open (probes)


class SafeJSONResponse(JSONResponse):
    """JSON that survives any string a client sent us (lone surrogates are escaped, not encoded)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def model_response(model: BaseModel) -> Response:
    """``model`` as the JSON body FastAPI would answer for it as the route's response_model, but
    serialised by pydantic in one step: no second validation, no intermediate dict, no json.dumps
    (the event loop's time per answer matters under load). A string pydantic cannot encode (a lone
    surrogate) goes through :class:`SafeJSONResponse` instead. Non-finite floats are written as
    null (pydantic's JSON)."""
    try:
        return Response(type(model).__pydantic_serializer__.to_json(model), media_type="application/json")
    except PydanticSerializationError:
        return SafeJSONResponse(model.model_dump(mode="json"))


async def get_service(request: Request) -> RouterService:
    """The app's service (async: a sync dependency would cost a thread hop per request)."""
    return request.app.state.service  # type: ignore[no-any-return]


def _prediction_map(row: Predictions) -> dict[str, Any]:
    """``{model: {"quality", "cost_usd", "latency_ms"}}`` of a one-row prediction; the response
    models validate it into :class:`ModelPrediction` (in pydantic's core: cheaper than building
    each one here)."""
    return row.as_dicts()[0]


def _prepare(svc: RouterService, req: RouteRequest) -> PreparedPrompt:
    if req.prompt is not None:
        return svc.prompt(req.prompt, has_tools=bool(req.tools), max_tokens=req.max_tokens)
    assert req.messages is not None
    return svc.messages_prompt([m.model_dump() for m in req.messages], tools=req.tools,
                               max_tokens=req.max_tokens)


def _policy_inputs(svc: RouterService, req: RouteRequest,
                   state: RouterState) -> tuple[PreparedPrompt, Preferences, Constraints]:
    """The request in the engine's terms: prompt, preferences and constraints (InputError if it
    cannot be routed as given)."""
    prompt = _prepare(svc, req)
    try:
        explicit = req.preferences.to_preferences() if req.preferences is not None else None
    except ValueError as e:
        raise InputError(str(e)) from None
    prefs = svc.preferences(req.preset, explicit)
    try:
        given = req.constraints.to_constraints() if req.constraints is not None else None
    except ValueError as e:
        raise InputError(str(e)) from None
    return prompt, prefs, svc.constraints(given, state=state)


def _check_count(svc: RouterService, n: int, what: str) -> None:
    limit = min(svc.settings.max_batch_requests, svc.settings.max_queue)
    if n > limit:
        raise InputError(f"{n} {what} in one call; the limit is {limit} (max_batch_requests, max_queue)")


class ItemValidationError(InputError):
    """A batch item that is not a valid route request (what /v1/route answers with a 422 body
    validation error); the message names each field and what is wrong with it."""


def validate_item(raw: Any) -> RouteRequest | ItemValidationError:
    """One ``/v1/route/batch`` item as a :class:`RouteRequest`, or the error saying why it is not."""
    try:
        return RouteRequest.model_validate(raw)
    except ValidationError as e:
        if not isinstance(raw, dict):
            return ItemValidationError(f"must be an object with 'prompt' or 'messages' (a route "
                                       f"request), got {type(raw).__name__}")
        return ItemValidationError(issues_text(validation_issues(list(e.errors())), raw))


ItemResult = RouteResponse | InputError | NoEligibleModelError


async def _route_many(svc: RouterService, fb: FeedbackLog,
                      reqs: Sequence[RouteRequest | InputError]) -> list[ItemResult]:
    """Route each request; an item that cannot be routed gets its error (not raised) in its place,
    and so does an item given as an error already (one that failed validation).

    Only the routable items are predicted and logged. Errors of the call as a whole (too many
    items, queue full, timeout) are raised."""
    _check_count(svc, len(reqs), "requests")
    state = svc.state  # one router for the whole call, even if /admin/reload swaps it meanwhile
    out: list[ItemResult | None] = [None] * len(reqs)
    todo: list[tuple[int, PreparedPrompt, Preferences, Constraints]] = []
    for i, r in enumerate(reqs):
        if isinstance(r, InputError):
            out[i] = r
            continue
        try:
            todo.append((i, *_policy_inputs(svc, r, state)))
        except InputError as e:
            out[i] = e
    rows = await svc.predict([p for _, p, _, _ in todo], state) if todo else []
    records = []
    for (i, p, prefs, cons), row in zip(todo, rows, strict=True):
        try:
            choice = svc.choose(row, p, prefs, cons, state)
        except NoEligibleModelError as e:
            out[i] = e
            continue
        request_id = uuid.uuid4().hex
        if fb.enabled:   # building a record takes event-loop time: only when it is logged
            records.append(decision_record(request_id, state, p, row, choice, prefs, cons))
        out[i] = RouteResponse(
            request_id=request_id, model=choice.model, predictions=_prediction_map(row),
            fallbacks=choice.fallbacks, reason=choice.reason, router_version=state.version,
            truncated=bool(row.truncated[0]) if len(row.truncated) else False,
            feasible=choice.decision.feasible, violated=list(choice.decision.violated),
            propensity=choice.propensity, exploration=choice.exploration.policy)
    if records:
        await fb.log_decisions(records)
    return cast(list[ItemResult], out)  # every item got a response or an error above


def _item_error(svc: RouterService, index: int, e: Exception) -> BatchItemError:
    """A batch item's error, as /v1/route would have answered it (422 ``detail``), named by index."""
    # counted as the 422 handlers count a refused /v1/route
    svc.metrics.rejected.labels("validation" if isinstance(e, ItemValidationError) else "input").inc()
    kind: Literal["invalid_request", "no_eligible_model"] = \
        "no_eligible_model" if isinstance(e, NoEligibleModelError) else "invalid_request"
    return BatchItemError(index=index, error=BatchItemErrorInfo(type=kind, message=f"requests[{index}]: {e}"))


async def get_feedback(request: Request) -> FeedbackLog:
    return request.app.state.feedback  # type: ignore[no-any-return]


@router.post("/v1/route", response_model=RouteResponse, responses=ERROR_RESPONSES, tags=["routing"],
             summary="Choose a model for one request")
async def route_one(body: RouteRequest, svc: RouterService = Depends(get_service),
                    fb: FeedbackLog = Depends(get_feedback)) -> Response:
    """Predict quality, cost and latency of every pool model and pick one under the preferences
    and constraints. Soft constraints nobody meets give the best compromise (``feasible: false``,
    ``violated`` and ``reason`` name them); if no model is eligible at all the answer is 422.

    With exploration on, ``model`` may be another eligible model than the greedy choice
    (``propensity`` < 1, ``reason`` says so). With feedback on, the decision is logged under
    ``request_id`` before the answer: report the outcome to ``POST /v1/feedback``."""
    result = (await _route_many(svc, fb, [body]))[0]
    if isinstance(result, Exception):
        raise InputError(str(result)) from None  # 422
    return model_response(result)


@router.post("/v1/route/batch", response_model=BatchRouteResponse, responses=BATCH_ERROR_RESPONSES,
             tags=["routing"], summary="Route several requests in one call")
async def route_batch(body: BatchRouteRequest, svc: RouterService = Depends(get_service),
                      fb: FeedbackLog = Depends(get_feedback)) -> Response:
    """Results follow the order of ``requests``; each item is routed, logged (and explored) like a
    ``/v1/route`` call. An item that cannot be routed (unknown model or preset, empty prompt after
    flattening ``messages``, no eligible model, ...) gets an error object ``{"index", "error":
    {"type", "message"}}`` in its place and the others are still routed: the answer is 200 as long
    as the body itself is a batch. Each item is validated on its own: an invalid item (an empty
    prompt string, a negative weight, an unknown field, ...) gets an ``invalid_request`` error whose
    message names the field and what is wrong with it, as ``/v1/route`` would in its 422. Only a body
    that is not a batch (not an object, no ``requests`` list of 1 or more items, more items than
    ``max_batch_requests``) fails the whole call with 422."""
    _check_count(svc, len(body.requests), "requests")  # before validating a huge list item by item
    results = await _route_many(svc, fb, [validate_item(r) for r in body.requests])
    return model_response(BatchRouteResponse(results=[_item_error(svc, i, r) if isinstance(r, Exception)
                                                      else r for i, r in enumerate(results)]))


@router.post("/v1/predict", response_model=PredictResponse, responses=ERROR_RESPONSES,
             tags=["routing"], summary="Raw per-model predictions")
async def predict(body: PredictRequest, svc: RouterService = Depends(get_service)) -> Response:
    _check_count(svc, len(body.prompts), "prompts")
    prepared = [svc.prompt(p, has_image=body.has_image, has_audio=body.has_audio,
                           has_tools=body.has_tools, max_tokens=body.max_tokens, where=f"prompts[{i}]")
                for i, p in enumerate(body.prompts)]
    state = svc.state
    rows = await svc.predict(prepared, state)
    return model_response(PredictResponse(
        router_version=state.version, models=list(state.models),
        predictions=[_prediction_map(r) for r in rows],
        input_tokens=[int(r.input_tokens[0]) for r in rows],
        truncated=[bool(r.truncated[0]) if len(r.truncated) else False for r in rows]))


@router.get("/v1/models", response_model=ModelsResponse, responses={401: ERROR_RESPONSES[401]},
            tags=["routing"], summary="The candidate pool and presets")
async def models(svc: RouterService = Depends(get_service)) -> ModelsResponse:
    state = svc.state
    infos = [ModelInfo(name=m.name, aliases=list(m.aliases), modalities=list(m.modalities),
                       context_window=m.context_window, input_price_per_1m=m.input_price_per_1m,
                       output_price_per_1m=m.output_price_per_1m, ttft_ms=m.ttft_ms,
                       output_tokens_per_s=m.output_tokens_per_s, proxyable=m.endpoint is not None)
             for m in state.pool.models]
    return ModelsResponse(router_version=state.version, models=infos,
                          presets={k: PresetInfo(**v.model_dump()) for k, v in svc.settings.presets.items()},
                          default_preset=svc.settings.default_preset)


@health_router.get("/healthz", response_model=HealthResponse, tags=["ops"], summary="Liveness and device")
async def healthz(request: Request) -> HealthResponse:
    """The router serving now (``router_version`` changes with /admin/reload and /admin/rollback)."""
    svc: RouterService = request.app.state.service
    state = svc.state
    device, fallback = device_info(state.predictor, svc.settings.device)
    return HealthResponse(status="ok", router_version=state.version, provider=str(state.predictor.provider),
                          device=device, requested_device=svc.settings.device, device_fallback=fallback,
                          models=len(state.models), max_length=getattr(state.predictor, "max_length", None),
                          model_file=getattr(state.predictor, "model_file", None),
                          precision=getattr(state.predictor, "precision", None),
                          previous_router_version=svc.previous.version if svc.previous else None,
                          exploration=state.exploration.name, feedback=request.app.state.feedback.enabled,
                          fleet=_fleet_health(request.app.state.fleet))


def _fleet_health(fleet: FleetWatcher | None) -> FleetHealth | None:
    return None if fleet is None else FleetHealth(**dataclasses.asdict(fleet.status()))


@health_router.get("/readyz", response_model=ReadyResponse, tags=["ops"],
            responses={503: {"model": ReadyResponse, "description": "Not ready yet."}},
            summary="Readiness: warm-up done and batcher running")
async def readyz(svc: RouterService = Depends(get_service)) -> Any:
    if svc.batcher.running and svc.warm:
        return ReadyResponse(ready=True, detail="ready")
    detail = "warming up" if svc.batcher.running else "batcher not running"
    return JSONResponse(ReadyResponse(ready=False, detail=detail).model_dump(), status_code=503)


@router.get("/metrics", tags=["ops"], summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format."},
                       401: ERROR_RESPONSES[401]},
            response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)
