"""App factory and entry point of the router service.

``create_app(settings, predictor)`` builds a self-contained FastAPI app (its own metrics registry,
batcher and HTTP client; no module-level state). ``serve(...)`` loads settings and an exported
router folder and runs it with uvicorn; ``neural-router serve`` (also ``python -m neural_router serve``)
calls it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from neural_router import __version__
from neural_router.feedback.store import FeedbackStore, safe_url
from neural_router.inference.interface import Predictor
from neural_router.policy.routing import NoEligibleModelError

from neural_router.serving.api import admin, feedback, proxy, routes
from neural_router.serving.api.guards import GuardMiddleware
from neural_router.serving.api.prometheus import MetricsMiddleware
from neural_router.serving.api.routes import SafeJSONResponse
from neural_router.serving.api.schemas import validation_issues
from neural_router.serving.config import ConfigError, ServeSettings, load_settings
from neural_router.serving.engine.batching import BatcherClosedError, QueueFullError
from neural_router.serving.engine.decisions import FeedbackLog
from neural_router.serving.engine.fleet import FleetWatcher, expose_router_version, replica_name
from neural_router.serving.engine.inputs import InputError
from neural_router.serving.engine.metrics import ServingMetrics
from neural_router.serving.engine.service import RouterService, device_info, load_router

__all__ = ["create_app", "serve"]

log = logging.getLogger("serving")


def otel_configured() -> bool:
    """Whether an OpenTelemetry tracer, meter or logger provider is set up in this process (e.g. by
    ``opentelemetry-instrument``), or FastAPI is asked to set one up itself at start-up."""
    if os.environ.get("FASTAPI_OTEL_AUTO_CONFIGURE", "").lower() == "true":
        return True
    try:
        from opentelemetry import _logs, metrics, trace
    except ImportError:
        return False
    providers = (trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider())
    # the API's placeholders until an SDK provider is set: ProxyTracerProvider, _ProxyMeterProvider, NoOp*
    return any(not type(p).__name__.lstrip("_").startswith(("Proxy", "NoOp")) for p in providers)


def telemetry_options() -> dict[str, Any]:
    """FastAPI keyword arguments for its native OpenTelemetry hooks. Left on, they ask on every
    request whether a provider is configured (environment lookups on the event loop); settled once
    when the app is built instead: on when a provider is configured, off otherwise. Empty for
    FastAPI versions without the hooks."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters or otel_configured():
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _error(request: Request, status: int, message: Any, code: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    """``{"detail": ...}``; on the OpenAI-compatible path also ``{"error": {...}}``."""
    body: dict[str, Any] = {"detail": message}
    if request.url.path == proxy.PROXY_PATH:
        text = message if isinstance(message, str) else "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in message)
        kind = "invalid_request_error" if status < 500 else "api_error"
        body["error"] = {"message": text, "type": kind, "code": code}
    return SafeJSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI, metrics: ServingMetrics) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        issues = validation_issues(list(exc.errors()))
        metrics.rejected.labels("validation").inc()
        return _error(request, 422, issues, "invalid_request")

    @app.exception_handler(InputError)
    async def _input(request: Request, exc: InputError) -> JSONResponse:
        metrics.rejected.labels("input").inc()
        return _error(request, 422, str(exc), "invalid_request")

    @app.exception_handler(NoEligibleModelError)
    async def _no_model(request: Request, exc: NoEligibleModelError) -> JSONResponse:
        return _error(request, 422, str(exc), "no_eligible_model")

    @app.exception_handler(QueueFullError)
    async def _full(request: Request, exc: QueueFullError) -> JSONResponse:
        metrics.rejected.labels("queue_full").inc()
        return _error(request, 429, str(exc), "queue_full", {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(asyncio.TimeoutError)
    async def _timeout(request: Request, exc: asyncio.TimeoutError) -> JSONResponse:
        metrics.rejected.labels("timeout").inc()
        return _error(request, 504, "no prediction within request_timeout_s "
                                    f"({app.state.settings.request_timeout_s} s)", "timeout")

    @app.exception_handler(BatcherClosedError)
    async def _closed(request: Request, exc: BatcherClosedError) -> JSONResponse:
        return _error(request, 503, str(exc), "unavailable", {"Retry-After": "1"})

    @app.exception_handler(proxy.ProxyError)
    async def _proxy(request: Request, exc: proxy.ProxyError) -> JSONResponse:
        return _error(request, exc.status, exc.message, exc.code, exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s: %s", request.url.path, exc, exc_info=exc)
        return _error(request, 500, f"internal error ({type(exc).__name__}); see the server log",
                      "internal_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(request, exc.status_code, str(exc.detail), "http_error",
                      dict(exc.headers) if exc.headers else None)


def _lifespan(settings: ServeSettings, service: RouterService,
              fb: FeedbackLog) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up (batcher, backend HTTP client, warm-up, fleet watcher) and shutdown of one app."""
    predictor = service.state.predictor
    _, fallback = device_info(predictor, settings.device)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if fallback and settings.device == "auto":  # load_predictor itself warns for an explicit "cuda"
            log.warning("CUDA is not available; the router runs on CPU (provider %s)", predictor.provider)
        log.info("router %s: %d models, provider %s, max_batch_size %d, max_wait_ms %g, exploration %s, "
                 "feedback %s", predictor.version, len(service.state.models), predictor.provider,
                 settings.max_batch_size, settings.max_wait_ms, service.state.exploration.name,
                 safe_url(settings.feedback_url) if settings.feedback_url else "off")
        await service.batcher.start()
        app.state.http = httpx.AsyncClient(timeout=httpx.Timeout(
            settings.backend_timeout_s, connect=settings.backend_connect_timeout_s))
        try:
            await service.batcher.run_in_worker(service.warm_up)
            service.warm = True
        except Exception:  # noqa: BLE001 - reported by /readyz, the service stays up
            log.exception("warm-up prediction failed; /readyz reports not ready")
        if app.state.fleet is not None:
            await app.state.fleet.start()
        try:
            yield
        finally:
            if app.state.fleet is not None:
                await app.state.fleet.stop()
            await app.state.http.aclose()
            await service.batcher.stop()
            await fb.stop()

    return lifespan


def create_app(settings: ServeSettings, predictor: Predictor, *, router_dir: str | Path | None = None,
               feedback_store: FeedbackStore | None = None) -> FastAPI:
    """A FastAPI app serving ``predictor`` configured by ``settings``; owns all of its state.

    ``feedback_store`` replaces the store ``settings.feedback_url`` would open (tests, embedding);
    the app closes it at shutdown.
    Raises ValueError/TypeError when the settings do not fit the predictor or the store or scorer
    cannot be set up."""
    metrics = ServingMetrics()
    service = RouterService(predictor, settings, metrics, str(router_dir) if router_dir else None)
    fb = FeedbackLog(settings, metrics, feedback_store)
    app = FastAPI(title="neural-router", version=__version__, lifespan=_lifespan(settings, service, fb),
                  default_response_class=SafeJSONResponse, **telemetry_options(),
                  description="Routes each LLM request to the model that best fits it.")
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    app.state.feedback = fb
    app.state.admin_lock = asyncio.Lock()
    app.state.fleet = FleetWatcher.from_settings(service, app.state.admin_lock)  # None: a lone replica
    expose_router_version(metrics.registry, service, replica_name(settings))
    secured = [Security(HTTPBearer(auto_error=False))] if settings.api_key else []
    app.include_router(routes.health_router)
    app.include_router(routes.router, dependencies=secured)
    app.include_router(feedback.router, dependencies=secured)
    app.include_router(proxy.router, dependencies=secured)
    app.include_router(admin.router)
    _install_error_handlers(app, metrics)
    _document_presets(app, sorted(settings.presets))
    key = settings.api_key.get_secret_value() if settings.api_key else None
    app.add_middleware(GuardMiddleware, api_key=key, max_body_bytes=settings.max_body_bytes)
    paths = [getattr(r, "path", "") for rt in (app.router, routes.router, routes.health_router,
                                               feedback.router, proxy.router, admin.router)
             for r in rt.routes]
    app.add_middleware(MetricsMiddleware, metrics=metrics, paths=paths)
    return app


def _document_presets(app: FastAPI, presets: list[str]) -> None:
    """The OpenAPI schema lists this app's preset names (they come from the settings)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            prop = schema["components"]["schemas"]["RouteRequest"]["properties"]["preset"]
            prop.pop("anyOf", None)
            prop.update({"type": "string", "enum": presets})
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _fail(message: str) -> SystemExit:
    print(f"neural-router serve: error: {message}", file=sys.stderr)
    return SystemExit(2)


def serve(router_dir: str | Path, host: str | None = None, port: int | None = None,
          device: str | None = None, config_file: str | Path | None = None) -> None:
    """Load the router folder and serve it with uvicorn until interrupted.

    Arguments left as None come from ``config_file`` / ``NEURAL_ROUTER_*`` / defaults. A missing or
    corrupt router folder or invalid settings exit with status 2 and a one-paragraph message.
    """
    try:
        settings = load_settings(config_file, host=host, port=port, device=device)
    except ConfigError as e:
        raise _fail(str(e)) from None
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        predictor = load_router(router_dir, settings.device, settings.max_prompt_tokens,
                                settings.inference_threads, settings.precision)
    except (ValueError, OSError) as e:  # RouterLoadError is a ValueError
        raise _fail(f"cannot load the router folder {router_dir}: {e}") from None
    try:
        app = create_app(settings, predictor, router_dir=router_dir)
    except (ValueError, TypeError) as e:
        raise _fail(str(e)) from None
    import uvicorn

    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                access_log=settings.access_log, timeout_graceful_shutdown=5)
