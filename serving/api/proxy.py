"""OpenAI-compatible ``POST /v1/chat/completions`` that routes, then forwards to the chosen model.

``model: "router"`` uses the default preset, ``"router:<preset>"`` a named one, and a pool model
name (or alias) skips routing. Only models with an ``endpoint`` are candidates. The request goes to
``<endpoint>/chat/completions`` with ``model`` set to the spec's ``api_model`` (or its name) and
``Authorization: Bearer $<api_key_env>``. On a connection error, timeout, HTTP 408/429/5xx or an
unreadable answer the next fallback is tried; other 4xx answers are the client's and are returned
as they are. Streams (SSE) are relayed line by line once the first line has arrived (so a backend
that fails before its first byte is still retried); ``model`` in every chunk names the pool model.

Routed calls go through exploration like ``/v1/route`` and, with ``feedback_url`` set, are logged as
decisions under the ``x-router-request-id`` of the answer (``x-router-propensity`` gives the
propensity), so clients can send ``POST /v1/feedback`` later. The decision is written once the
forwarding is settled (before the answer is returned) and names the model that *served* the answer
(after a fallback, not the router's choice), so feedback, which defaults to the decision's model,
is credited to the model that answered. ``context["proxy"]`` keeps ``chosen_model`` (the
router's choice, whose probability ``propensity`` is), ``served_model`` (None when every backend
failed) and ``attempts``; ``/v1/feedback`` refuses feedback naming another model than
``served_model``. When a ``scorer`` is configured and the
request carries a reference answer (``metadata.reference``, removed before forwarding, or the
``x-router-reference`` header), the backend's answer is graded in the background and stored as the
outcome of the model that answered, with the measured latency of that backend call and, when the
backend reports ``usage``, its cost from the pool's prices. Calls naming a pool model directly are
not routing decisions and are not logged.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from neural_router.feedback.store import PROXY_CONTEXT
from neural_router.policy.routing import NoEligibleModelError
from neural_router.pool import ModelSpec

from neural_router.serving.api.routes import get_feedback, get_service
from neural_router.serving.api.schemas import ChatCompletionRequest, OpenAIErrorResponse
from neural_router.serving.engine.decisions import DecisionRecord, FeedbackLog, decision_record
from neural_router.serving.engine.inputs import PresetError, PreparedPrompt, clean_text
from neural_router.serving.engine.service import RouterService, RouterState

# called with (answer text, the backend's usage object or None, latency of the backend call in ms)
OnAnswer = Callable[[str, Any, float], None]
REFERENCE_HEADER = "x-router-reference"

log = logging.getLogger(__name__)
PROXY_PATH = "/v1/chat/completions"
_RETRYABLE = {408, 409, 425, 429}
_OAI = {"model": OpenAIErrorResponse}
router = APIRouter()


class ProxyError(Exception):
    """Answered as an OpenAI-style error: ``{"error": {"message", "type", "code"}}``."""

    def __init__(self, status: int, message: str, code: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _header_value(name: str) -> str:
    return quote(name, safe="/:.-_@+")


def _direct(state: RouterState, model: str) -> list[str]:
    """A pool model asked for by name: it alone, no routing."""
    name = state.pool.resolve(model)
    if name is None:
        raise ProxyError(404, f"model {model!r} is neither 'router', 'router:<preset>' nor a "
                              f"pool model (known: {', '.join(state.models)})", "model_not_found")
    if state.pool.get(name).endpoint is None:
        raise ProxyError(400, f"model {name!r} has no endpoint configured", "no_endpoint")
    return [name]


@dataclass(frozen=True)
class _Routed:
    candidates: list[str]
    prompt: PreparedPrompt
    propensity: float
    record: DecisionRecord | None  # to log once the forwarding is settled (None: feedback is off)

    def served_by(self, served: str | None, attempts: int) -> DecisionRecord | None:
        """The decision as logged: ``model`` is the model that answered (the router's choice unless
        a fallback answered; the choice when none did), the rest under ``context["proxy"]``."""
        if self.record is None:
            return None
        chosen = self.candidates[0]
        proxy = {"chosen_model": chosen, "served_model": served, "attempts": attempts}
        return replace(self.record, model=served or chosen,
                       context={**self.record.context, PROXY_CONTEXT: proxy})


class _DeferredGrading:
    """Grades an answer only once its decision is logged (the outcome row needs the decision row,
    which is written after the backend answered, naming the model that served). An answer that
    arrives before waits here; if the decision could not be logged, it is not graded."""

    def __init__(self, grader: Callable[[str], OnAnswer]) -> None:
        self._grader = grader
        self._logged: bool | None = None  # None: not settled yet
        self._waiting: list[tuple[str, str, Any, float]] = []

    def for_model(self, name: str) -> OnAnswer:
        def on_answer(text: str, usage: Any, latency_ms: float) -> None:
            if self._logged is None:
                self._waiting.append((name, text, usage, latency_ms))
            elif self._logged:
                self._grader(name)(text, usage, latency_ms)
        return on_answer

    def decision_logged(self, logged: bool) -> None:
        self._logged = logged
        waiting, self._waiting = self._waiting, []
        if logged:
            for name, text, usage, latency_ms in waiting:
                self._grader(name)(text, usage, latency_ms)


async def _route(svc: RouterService, state: RouterState, fb: FeedbackLog, body: ChatCompletionRequest,
                 request_id: str) -> _Routed:
    """The served model first (after exploration), then the fallbacks; only models with an
    endpoint take part. With feedback on, the decision to log under ``request_id`` comes along
    (the caller logs it once it knows which model answered)."""
    preset = body.model.split(":", 1)[1] if ":" in body.model else None
    try:
        prefs = svc.preferences(preset, None)
    except PresetError as e:
        raise ProxyError(400, str(e), "unknown_preset") from None
    proxyable = [m.name for m in state.pool.models if m.endpoint]
    if not proxyable:
        raise ProxyError(503, "no model in the pool has an endpoint to forward to; set `endpoint` "
                              "in the router's models.yaml or `endpoints` in the serve config",
                         "no_endpoint")
    prompt = svc.messages_prompt([m.model_dump() for m in body.messages], tools=body.tools,
                                 max_tokens=body.max_completion_tokens or body.max_tokens)
    constraints = svc.constraints(None, restrict_to=proxyable, state=state)
    row = (await svc.predict([prompt], state))[0]
    try:
        choice = svc.choose(row, prompt, prefs, constraints, state)
    except NoEligibleModelError as e:
        raise ProxyError(422, f"no model with an endpoint can serve this request: {e}",
                         "no_eligible_model") from None
    record = decision_record(request_id, state, prompt, row, choice, prefs, constraints) if fb.enabled else None
    return _Routed([choice.model, *choice.fallbacks], prompt, choice.propensity, record)


def _reference(payload: dict[str, Any], request: Request) -> str | None:
    """The reference answer of the request, if any; ``metadata.reference`` is taken out of the
    forwarded payload (the backend must not see the answer)."""
    ref: str | None = request.headers.get(REFERENCE_HEADER)
    meta = payload.get("metadata")
    if isinstance(meta, dict) and "reference" in meta:
        value = meta.pop("reference")
        if not meta:
            payload.pop("metadata")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ProxyError(400, "metadata.reference must be a string", "invalid_reference")
        ref = value
    return ref


def _answer_text(data: Any) -> str | None:
    """``choices[0].message.content`` of a chat completion, text parts joined; None if absent."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    if isinstance(content, list):
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else None


def _usage_cost(spec: ModelSpec, usage: Any) -> tuple[float | None, int | None]:
    """(cost in USD from the pool's prices, completion tokens) of an OpenAI ``usage`` object."""
    if not isinstance(usage, dict):
        return None, None
    pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
    valid = [isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (pt, ct)]
    out_tokens = ct if valid[1] else None
    if not all(valid):
        return None, out_tokens
    return float(spec.cost_usd(pt, ct)), out_tokens


def _rewrite_chunk(line: str, name: str) -> str:
    if not line.startswith("data:"):
        return line
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return line
    try:
        obj = json.loads(data)
    except ValueError:
        return line
    if isinstance(obj, dict) and "model" in obj:
        obj["model"] = name
        return "data: " + json.dumps(obj, separators=(",", ":"))
    return line


def _delta_text(line: str) -> tuple[str, Any]:
    """(content delta, usage or None) of one SSE line of a chat-completion stream (the last chunk
    may carry only ``usage``, with no choices)."""
    data = line[5:].strip() if line.startswith("data:") else ""
    if not data or data == "[DONE]":
        return "", None
    try:
        obj = json.loads(data)
    except ValueError:
        return "", None
    if not isinstance(obj, dict):
        return "", None
    usage = obj.get("usage")
    try:
        text = (obj["choices"][0].get("delta") or {}).get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        text = None
    return (text if isinstance(text, str) else ""), usage


async def _relay(resp: httpx.Response, lines: AsyncIterator[str], first: str, name: str,
                 svc: RouterService, on_answer: OnAnswer | None = None,
                 started: float = 0.0) -> AsyncIterator[bytes]:
    parts: list[str] = []
    usage: Any = None

    def collect(line: str) -> None:
        nonlocal usage
        if on_answer is not None:
            text, u = _delta_text(line)
            parts.append(text)
            usage = u or usage

    try:
        collect(first)
        yield (_rewrite_chunk(first, name) + "\n").encode()
        async for line in lines:
            collect(line)
            yield (_rewrite_chunk(line, name) + "\n").encode()
    except (httpx.HTTPError, httpx.StreamError) as e:
        svc.metrics.proxy_attempts.labels(name, "stream_error").inc()
        err = {"error": {"message": f"backend {name} failed mid-stream: {type(e).__name__}",
                         "type": "upstream_error", "code": "stream_interrupted"}}
        yield f"data: {json.dumps(err)}\n\n".encode()
    else:
        if on_answer is not None:  # only complete streams are graded
            on_answer("".join(parts), usage, (time.perf_counter() - started) * 1000.0)
    finally:
        await resp.aclose()


def _backend_headers(spec: ModelSpec) -> dict[str, str]:
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if spec.api_key_env:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise LookupError(f"environment variable {spec.api_key_env} (api_key_env) is not set")
        headers["authorization"] = f"Bearer {key}"
    return headers


async def _attempt(client: httpx.AsyncClient, spec: ModelSpec, payload: dict[str, Any], stream: bool,
                   headers: dict[str, str], svc: RouterService,
                   on_answer: OnAnswer | None = None) -> Response | str:
    """One backend call: the response to return, or why this backend failed (then try the next).
    ``on_answer`` gets the answer of a successful call (for a stream: once it is complete)."""
    name = spec.name
    try:
        backend_headers = _backend_headers(spec)
    except LookupError as e:
        svc.metrics.proxy_attempts.labels(name, "no_key").inc()
        return str(e)
    assert spec.endpoint is not None
    req = client.build_request("POST", spec.endpoint.rstrip("/") + "/chat/completions",
                               json={**payload, "model": spec.api_model or name}, headers=backend_headers)
    started = time.perf_counter()
    try:
        resp = await client.send(req, stream=True)
    except httpx.HTTPError as e:
        timeout = isinstance(e, httpx.TimeoutException)
        svc.metrics.proxy_attempts.labels(name, "timeout" if timeout else "connect_error").inc()
        return "timeout" if timeout else type(e).__name__
    status = resp.status_code
    if status >= 500 or status in _RETRYABLE:
        await resp.aclose()
        svc.metrics.proxy_attempts.labels(name, f"http_{status}").inc()
        return f"HTTP {status}"
    if stream and status == 200:
        return await _relay_stream(resp, name, headers, svc, on_answer, started)
    return await _read_answer(resp, name, headers, svc, on_answer, started)


async def _relay_stream(resp: httpx.Response, name: str, headers: dict[str, str], svc: RouterService,
                        on_answer: OnAnswer | None, started: float) -> Response | str:
    """A streaming answer relayed once its first line arrived (so a backend failing before its
    first byte is still retried), or why it failed."""
    lines = resp.aiter_lines()
    try:
        first = await lines.__anext__()
    except (httpx.HTTPError, httpx.StreamError, StopAsyncIteration) as e:
        await resp.aclose()
        svc.metrics.proxy_attempts.labels(name, "stream_error").inc()
        return "empty stream" if isinstance(e, StopAsyncIteration) else type(e).__name__
    svc.metrics.proxy_attempts.labels(name, "ok").inc()
    return StreamingResponse(_relay(resp, lines, first, name, svc, on_answer, started),
                             media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})


async def _read_answer(resp: httpx.Response, name: str, headers: dict[str, str], svc: RouterService,
                       on_answer: OnAnswer | None, started: float) -> Response | str:
    """A whole (non-streamed) answer: returned with ``model`` naming the pool model; a client error
    (4xx) returned as it is; or why it failed (unreadable, not a JSON object)."""
    status = resp.status_code
    try:
        content = await resp.aread()
    except (httpx.HTTPError, httpx.StreamError) as e:
        svc.metrics.proxy_attempts.labels(name, "read_error").inc()
        return f"{type(e).__name__} while reading"
    finally:
        await resp.aclose()
    if status >= 300:  # the client's mistake: the next model would refuse it too; returned as is
        svc.metrics.proxy_attempts.labels(name, f"http_{status}").inc()
        return Response(content, status_code=status, headers=headers,
                        media_type=resp.headers.get("content-type", "application/json"))
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        svc.metrics.proxy_attempts.labels(name, "bad_json").inc()
        return "answer is not a JSON object"
    svc.metrics.proxy_attempts.labels(name, "ok").inc()
    data["model"] = name
    if on_answer is not None and (text := _answer_text(data)) is not None:
        on_answer(text, data.get("usage"), (time.perf_counter() - started) * 1000.0)
    return JSONResponse(data, status_code=status, headers=headers)


def _grader(fb: FeedbackLog, state: RouterState, request_id: str, prompt: str,
            reference: str) -> Callable[[str], OnAnswer]:
    """Per backend model: the callback that grades its answer in the background."""
    def for_model(name: str) -> OnAnswer:
        spec = state.pool.get(name)

        def on_answer(text: str, usage: Any, latency_ms: float) -> None:
            cost, out_tokens = _usage_cost(spec, usage)
            fb.grade_later(request_id, name, prompt, clean_text(text), reference, latency_ms=latency_ms,
                           cost_usd=cost, output_tokens=out_tokens)
        return on_answer
    return for_model


@router.post(PROXY_PATH, tags=["openai"], summary="OpenAI-compatible chat completions, routed",
             responses={200: {"description": "The backend's completion (JSON, or SSE when "
                                             "stream=true); `model` and `x-router-model` name the "
                                             "chosen model.",
                              "content": {"application/json": {"schema": {"type": "object"}},
                                          "text/event-stream": {"schema": {"type": "string"}}}},
                        400: _OAI, 401: _OAI, 404: _OAI, 413: _OAI, 422: _OAI, 429: _OAI,
                        502: _OAI, 503: _OAI, 504: _OAI},
             response_class=JSONResponse)
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           svc: RouterService = Depends(get_service),
                           fb: FeedbackLog = Depends(get_feedback)) -> Response:
    """Route (``model: "router"`` / ``"router:<preset>"``) or pick the named model, forward, fall
    back on backend failures. A reference answer in ``metadata.reference`` (or the
    ``x-router-reference`` header) lets a configured scorer grade the answer of a routed call."""
    request_id = uuid.uuid4().hex
    state = svc.state  # one router for the whole call
    payload: dict[str, Any] = body.model_dump(mode="json", exclude_unset=True)
    reference = _reference(payload, request)
    extra_headers: dict[str, str] = {}
    routed: _Routed | None = None
    grading: _DeferredGrading | None = None
    if body.model == "router" or body.model.startswith("router:"):
        routed = await _route(svc, state, fb, body, request_id)
        candidates = routed.candidates
        extra_headers["x-router-propensity"] = f"{routed.propensity:.6g}"
        if reference is not None and routed.record is not None and fb.scorer is not None:
            grading = _DeferredGrading(_grader(fb, state, request_id, routed.prompt.text, reference))
    else:
        candidates = _direct(state, body.model)
    failures: list[str] = []
    answer: Response | None = None
    served: str | None = None
    attempt = 0
    for attempt, name in enumerate(candidates, start=1):
        spec = state.pool.get(name)
        if spec.endpoint is None:
            continue
        headers = {"x-router-model": _header_value(name), "x-router-request-id": request_id,
                   "x-router-attempts": str(attempt), **extra_headers}
        outcome = await _attempt(request.app.state.http, spec, payload, body.stream, headers, svc,
                                 grading.for_model(name) if grading else None)
        if isinstance(outcome, Response):
            answer, served = outcome, name
            break
        failures.append(f"{name}: {outcome}")
    if routed is not None:  # logged before answering, so the request id is known to /v1/feedback
        record = routed.served_by(served, attempt)
        logged = await fb.log_decisions([record]) if record is not None else 0
        if grading is not None:
            grading.decision_logged(logged > 0)
    if answer is None:
        raise ProxyError(502, f"every candidate model failed ({len(failures)} tried): " + "; ".join(failures),
                         "all_backends_failed", {"x-router-request-id": request_id})
    return answer
