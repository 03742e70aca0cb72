"""OpenAI-compatible ``POST /v1/chat/completions`` that routes, then forwards to the chosen model.

``model: "router"`` uses the default preset, ``"router:<preset>"`` a named one, and a pool model
name (or alias) skips routing. Only models with an ``endpoint`` are candidates. The request goes to
``<endpoint>/chat/completions`` with ``model`` set to the spec's ``api_model`` (or its name) and
``Authorization: Bearer $<api_key_env>``. On a connection error, timeout, HTTP 408/429/5xx or an
unreadable answer the next fallback is tried; other 4xx answers are the client's and are returned
as they are. Streams (SSE) are relayed line by line once the first line has arrived (so a backend
that fails before its first byte is still retried); ``model`` in every chunk names the pool model.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from neural_router.policy import NoEligibleModelError
from neural_router.pool import ModelSpec

from serving.routes import get_service
from serving.schemas import ChatCompletionRequest, OpenAIErrorResponse
from serving.service import PresetError, RouterService

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


def _direct(svc: RouterService, model: str) -> list[str]:
    """A pool model asked for by name: it alone, no routing."""
    name = svc.pool.resolve(model)
    if name is None:
        raise ProxyError(404, f"model {model!r} is neither 'router', 'router:<preset>' nor a "
                              f"pool model (known: {', '.join(svc.models)})", "model_not_found")
    if svc.pool.get(name).endpoint is None:
        raise ProxyError(400, f"model {name!r} has no endpoint configured", "no_endpoint")
    return [name]


async def _route(svc: RouterService, body: ChatCompletionRequest) -> list[str]:
    """The routed model first, then its fallbacks; only models with an endpoint take part."""
    preset = body.model.split(":", 1)[1] if ":" in body.model else None
    try:
        prefs = svc.preferences(preset, None)
    except PresetError as e:
        raise ProxyError(400, str(e), "unknown_preset") from None
    proxyable = [m.name for m in svc.pool.models if m.endpoint]
    if not proxyable:
        raise ProxyError(503, "no model in the pool has an endpoint to forward to; set `endpoint` "
                              "in the router's models.yaml or `endpoints` in the serve config",
                         "no_endpoint")
    prompt = svc.messages_prompt([m.model_dump() for m in body.messages], tools=body.tools,
                                 max_tokens=body.max_completion_tokens or body.max_tokens)
    constraints = svc.constraints(None, restrict_to=proxyable)
    row = (await svc.predict([prompt]))[0]
    try:
        decision = svc.decide(row, prompt, prefs, constraints)
    except NoEligibleModelError as e:
        raise ProxyError(422, f"no model with an endpoint can serve this request: {e}",
                         "no_eligible_model") from None
    return [decision.model, *decision.fallbacks]


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


async def _relay(resp: httpx.Response, lines: AsyncIterator[str], first: str, name: str,
                 svc: RouterService) -> AsyncIterator[bytes]:
    try:
        yield (_rewrite_chunk(first, name) + "\n").encode()
        async for line in lines:
            yield (_rewrite_chunk(line, name) + "\n").encode()
    except (httpx.HTTPError, httpx.StreamError) as e:
        svc.metrics.proxy_attempts.labels(name, "stream_error").inc()
        err = {"error": {"message": f"backend {name} failed mid-stream: {type(e).__name__}",
                         "type": "upstream_error", "code": "stream_interrupted"}}
        yield f"data: {json.dumps(err)}\n\n".encode()
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
                   headers: dict[str, str], svc: RouterService) -> Response | str:
    """One backend call: the response to return, or why this backend failed (then try the next)."""
    name = spec.name
    try:
        backend_headers = _backend_headers(spec)
    except LookupError as e:
        svc.metrics.proxy_attempts.labels(name, "no_key").inc()
        return str(e)
    assert spec.endpoint is not None
    req = client.build_request("POST", spec.endpoint.rstrip("/") + "/chat/completions",
                               json={**payload, "model": spec.api_model or name}, headers=backend_headers)
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
        lines = resp.aiter_lines()
        try:  # wait for the first line, so a backend failing before its first byte is still retried
            first = await lines.__anext__()
        except (httpx.HTTPError, httpx.StreamError, StopAsyncIteration) as e:
            await resp.aclose()
            svc.metrics.proxy_attempts.labels(name, "stream_error").inc()
            return "empty stream" if isinstance(e, StopAsyncIteration) else type(e).__name__
        svc.metrics.proxy_attempts.labels(name, "ok").inc()
        return StreamingResponse(_relay(resp, lines, first, name, svc), media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache"})
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
    return JSONResponse(data, status_code=status, headers=headers)


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
                           svc: RouterService = Depends(get_service)) -> Response:
    request_id = uuid.uuid4().hex
    routed = body.model == "router" or body.model.startswith("router:")
    candidates = await _route(svc, body) if routed else _direct(svc, body.model)
    payload: dict[str, Any] = body.model_dump(mode="json", exclude_unset=True)
    failures: list[str] = []
    for attempt, name in enumerate(candidates, start=1):
        spec = svc.pool.get(name)
        if spec.endpoint is None:
            continue
        headers = {"x-router-model": _header_value(name), "x-router-request-id": request_id,
                   "x-router-attempts": str(attempt)}
        outcome = await _attempt(request.app.state.http, spec, payload, body.stream, headers, svc)
        if isinstance(outcome, Response):
            return outcome
        failures.append(f"{name}: {outcome}")
    raise ProxyError(502, f"every candidate model failed ({len(failures)} tried): " + "; ".join(failures),
                     "all_backends_failed", {"x-router-request-id": request_id})
