"""HTTP side of the metrics: the middleware counting and timing every request, and the exposition
format of ``/metrics`` (the metrics themselves: :mod:`neural_router.serving.engine.metrics`)."""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neural_router.serving.engine.metrics import ServingMetrics

CONTENT_TYPE = CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Counts every HTTP request (auth and size rejections included) and times it.

    Paths that are not routes of the app are labelled ``other`` to keep label cardinality bounded.
    """

    def __init__(self, app: ASGIApp, *, metrics: ServingMetrics, paths: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in self.paths else "other"
        method = scope.get("method", "GET")
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(endpoint, method, str(status)).inc()
