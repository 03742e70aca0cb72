"""The app factory: error mapping, OpenAPI, OpenTelemetry hooks, and batching, back-pressure and
timeouts through the app (ASGI transport, stub predictor)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from neural_router.serving.api.app import create_app, serve
from neural_router.serving.config import ServeSettings
from tests.serving.helpers import StubPredictor


def test_fastapi_telemetry_hooks_are_off_unless_opentelemetry_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    from fastapi import FastAPI
    from opentelemetry import trace

    from neural_router.serving.api import app as app_module

    monkeypatch.delenv("FASTAPI_OTEL_AUTO_CONFIGURE", raising=False)
    hooks = "telemetry" in inspect.signature(FastAPI.__init__).parameters
    assert app_module.otel_configured() is False        # only the API's placeholder providers here
    off = {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    assert app_module.telemetry_options() == (off if hooks else {})

    class TracerProvider:                                # what an SDK set-up installs
        pass

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: TracerProvider())
    assert app_module.otel_configured() is True and app_module.telemetry_options() == {}
    monkeypatch.undo()
    monkeypatch.setenv("FASTAPI_OTEL_AUTO_CONFIGURE", "true")  # FastAPI will set one up at start-up
    assert app_module.otel_configured() is True and app_module.telemetry_options() == {}


def test_openapi_documents_the_api(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/route", "/v1/route/batch", "/v1/predict", "/v1/models", "/healthz", "/readyz",
                 "/metrics", "/v1/chat/completions"):
        assert path in spec["paths"], path
    route = spec["paths"]["/v1/route"]["post"]
    assert {"200", "422", "429", "504", "413"} <= set(route["responses"])
    results = spec["components"]["schemas"]["BatchRouteResponse"]["properties"]["results"]["items"]
    assert {x["$ref"] for x in results["anyOf"]} == {"#/components/schemas/RouteResponse",
                                                    "#/components/schemas/BatchItemError"}
    item_error = spec["components"]["schemas"]["BatchItemError"]
    assert set(item_error["required"]) == {"index", "error"} and item_error["additionalProperties"] is False
    assert set(spec["components"]["schemas"]["BatchItemErrorInfo"]["properties"]["type"]["enum"]) == {
        "invalid_request", "no_eligible_model"}
    req = spec["components"]["schemas"]["RouteRequest"]
    assert req["additionalProperties"] is False and "oneOf" in req
    assert spec["components"]["schemas"]["PreferencesIn"]["properties"]["cost_weight"]["minimum"] == 0


# ---- batching, back-pressure and timeouts through the app ----------------------------------------

async def _concurrent(app: Any, n: int, payload: dict[str, Any]) -> list[httpx.Response]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await asyncio.gather(*(c.post("/v1/route", json=payload) for _ in range(n)))


def test_concurrent_requests_are_batched_off_the_event_loop() -> None:
    stub = StubPredictor(delay_s=0.02)
    app = create_app(ServeSettings(max_batch_size=8, max_wait_ms=30), stub)
    rs = asyncio.run(_concurrent(app, 24, {"prompt": "batch me"}))
    assert [r.status_code for r in rs] == [200] * 24
    served = stub.batches[1:]  # [0] is the warm-up
    assert sum(served) == 24 and max(served) == 8 and len(served) <= 5
    assert all(t.startswith("router-infer") for t in stub.threads)


def test_full_queue_answers_429_with_retry_after() -> None:
    stub = StubPredictor(delay_s=0.05)
    app = create_app(ServeSettings(max_batch_size=1, max_wait_ms=0, max_queue=2), stub)
    rs = asyncio.run(_concurrent(app, 12, {"prompt": "flood"}))
    codes = [r.status_code for r in rs]
    assert 429 in codes and 200 in codes and set(codes) <= {200, 429}
    rejected = next(r for r in rs if r.status_code == 429)
    assert int(rejected.headers["retry-after"]) >= 1 and "queue is full" in rejected.json()["detail"]


def test_slow_prediction_times_out_with_504() -> None:
    stub = StubPredictor(delay_s=0.3)
    app = create_app(ServeSettings(request_timeout_s=0.05), stub)
    rs = asyncio.run(_concurrent(app, 1, {"prompt": "slow"}))
    assert rs[0].status_code == 504 and "request_timeout_s" in rs[0].json()["detail"]


def test_one_bad_prompt_fails_only_its_own_request() -> None:
    stub = StubPredictor(delay_s=0.01)
    app = create_app(ServeSettings(max_batch_size=8, max_wait_ms=50), stub)

    async def go() -> list[httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                tasks = [c.post("/v1/route", json={"prompt": p}) for p in ("ok 1", "EXPLODE", "ok 2")]
                return await asyncio.gather(*tasks)
    rs = asyncio.run(go())
    assert [r.status_code for r in rs] == [200, 500, 200]
    assert "RuntimeError" in rs[1].json()["detail"]
    assert sum(stub.batches[1:]) == 2  # the two good prompts were predicted after the batch failed


# ---- serve(): start-up refusals -------------------------------------------------------------------

def test_serve_refuses_a_bad_store_scorer_or_boost_model(tiny_router_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "not-a-dir").write_text("x")
    for config, message in (({"feedback_url": f"sqlite:///{tmp_path}/not-a-dir/f.db"}, "cannot open the feedback store"),
                            ({"scorer": {"type": "telepathy"}}, "unknown scorer type"),
                            ({"exploration": {"kind": "thompson", "boost_models": ["gpt-17"]}}, "boost_models"),
                            ({"exploration": {"kind": "greedy"}}, "exploration.kind"),
                            ({"exploration": {"kind": "thompson", "thompson_evidence_half": 200}},
                             "no per-model outcome counts")):
        cfg = tmp_path / "serve.yaml"
        cfg.write_text(yaml.safe_dump(config))
        router = tiny_router_dir
        if "thompson_evidence_half" in str(config):  # a router folder without its training metrics
            router = tmp_path / "no-metrics"
            shutil.copytree(tiny_router_dir, router, dirs_exist_ok=True)
            (router / "training_metrics.json").unlink()
        with pytest.raises(SystemExit) as exit_info:
            serve(router, config_file=cfg)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
