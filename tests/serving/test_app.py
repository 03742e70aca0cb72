"""In-process tests of the router API (FastAPI TestClient / ASGI transport) with a stand-in predictor.

The stand-in has the real predictor's interface (models, version, provider, pool, max_length,
predict) and deterministic outputs, so these tests pin the HTTP behaviour; the real ONNX router is
exercised end to end in test_serving_e2e.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from neural_router.pool import ModelPool, ModelSpec
from neural_router.inference.interface import Predictions, RequestFeatures

from neural_router.serving.api.app import create_app
from neural_router.serving.engine.batching import DynamicBatcher, QueueFullError
from neural_router.serving.config import ConfigError, EndpointOverride, ServeSettings, load_settings
from neural_router.serving.engine.service import clean_text, flatten_messages

POOL = ModelPool(models=(
    ModelSpec(name="big", input_price_per_1m=10, output_price_per_1m=30, ttft_ms=800,
              output_tokens_per_s=30, context_window=100_000, modalities=("text", "image", "tools"),
              aliases=("big-latest",)),
    ModelSpec(name="mid", input_price_per_1m=1, output_price_per_1m=2, ttft_ms=400,
              output_tokens_per_s=80, context_window=16_000, modalities=("text", "tools")),
    ModelSpec(name="small", input_price_per_1m=0.1, output_price_per_1m=0.2, ttft_ms=150,
              output_tokens_per_s=150, context_window=4_096),
))


class StubPredictor:
    """Deterministic stand-in: quality from a prompt hash (big > mid > small), tokens = words."""

    version = "stub-1"

    def __init__(self, provider: str = "CPUExecutionProvider", max_length: int = 64,
                 delay_s: float = 0.0) -> None:
        self.pool = POOL
        self.models = POOL.names
        self.provider = provider
        self.max_length = max_length
        self.delay_s = delay_s
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def predict(self, prompts: list[str], features: list[RequestFeatures] | None = None) -> Predictions:
        if any("EXPLODE" in p for p in prompts):
            raise RuntimeError("stub predictor exploded")
        self.batches.append(len(prompts))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        n = len(prompts)
        h = np.array([int(hashlib.sha1(p.encode()).hexdigest()[:6], 16) / 0xFFFFFF for p in prompts])
        quality = np.stack([0.6 + 0.3 * h, 0.4 + 0.3 * h, 0.2 + 0.3 * h], axis=1)
        tokens = np.array([max(1, len(p.split())) for p in prompts], dtype=np.int64)
        out = np.full((n, 3), 200.0)
        return Predictions(self.models, quality, self.pool.cost_usd(tokens, out), self.pool.latency_ms(out),
                           out, tokens, tokens > self.max_length)


def make_client(predictor: StubPredictor | None = None, **settings: Any) -> TestClient:
    app = create_app(ServeSettings(**settings), predictor or StubPredictor())
    return TestClient(app)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with make_client() as c:
        yield c


# ---- /v1/route ---------------------------------------------------------------------------------

def test_route_prompt_returns_decision_and_all_predictions(client: TestClient) -> None:
    r = client.post("/v1/route", json={"prompt": "What is the capital of France?"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) >= {"request_id", "model", "predictions", "fallbacks", "reason",
                         "router_version", "truncated"}
    assert body["router_version"] == "stub-1"
    assert set(body["predictions"]) == {"big", "mid", "small"}
    assert set(body["predictions"]["big"]) == {"quality", "cost_usd", "latency_ms"}
    assert body["model"] in POOL.names and body["model"] not in body["fallbacks"]
    assert sorted([body["model"], *body["fallbacks"]]) == sorted(POOL.names)
    assert body["truncated"] is False and body["feasible"] is True
    # quality-only preferences pick the highest predicted quality (the stub ranks big first)
    r = client.post("/v1/route", json={"prompt": "hi", "preferences": {"quality_weight": 1}})
    assert r.json()["model"] == "big"
    r = client.post("/v1/route", json={"prompt": "hi", "preset": "cheap",
                                       "preferences": {"quality_weight": 0.01, "cost_weight": 1}})
    assert r.json()["model"] == "small"


def test_route_messages_image_audio_and_tools_restrict_models(client: TestClient) -> None:
    image = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
        "preferences": {"quality_weight": 0.01, "cost_weight": 1}}
    r = client.post("/v1/route", json=image)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "big"  # the only model accepting images, even when cheapness wins
    tools = {"prompt": "call the weather tool", "tools": [{"type": "function", "function": {"name": "w"}}],
             "preferences": {"quality_weight": 0.01, "cost_weight": 1}}
    r = client.post("/v1/route", json=tools)
    assert r.json()["model"] == "mid" and "small" not in r.json()["fallbacks"]
    audio = {"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]}
    r = client.post("/v1/route", json=audio)
    assert r.status_code == 422 and "audio" in r.json()["detail"]


def test_route_max_tokens_uses_context_windows(client: TestClient) -> None:
    r = client.post("/v1/route", json={"prompt": "write a novel", "max_tokens": 50_000,
                                       "preferences": {"quality_weight": 0.01, "cost_weight": 1}})
    assert r.status_code == 200 and r.json()["model"] == "big" and r.json()["fallbacks"] == []
    r = client.post("/v1/route", json={"prompt": "write a novel", "max_tokens": 500_000})
    assert r.status_code == 422
    assert "no model can serve" in r.json()["detail"]


def test_constraints_aliases_unknown_models_and_soft_violations(client: TestClient) -> None:
    r = client.post("/v1/route", json={"prompt": "x", "constraints": {"allowed_models": ["big-latest", "small"]}})
    assert r.status_code == 200 and r.json()["model"] in {"big", "small"}
    assert "mid" not in r.json()["fallbacks"]
    r = client.post("/v1/route", json={"prompt": "x", "constraints": {"denied_models": ["gpt-17"]}})
    assert r.status_code == 422 and "gpt-17" in r.json()["detail"]
    r = client.post("/v1/route", json={"prompt": "x", "constraints": {"allowed_models": []}})
    assert r.status_code == 422
    # nobody reaches quality 0.99: best compromise, violation named
    r = client.post("/v1/route", json={"prompt": "x", "constraints": {"min_quality": 0.99}})
    assert r.status_code == 200
    body = r.json()
    assert body["feasible"] is False and body["violated"] == ["min_quality"]
    assert "min_quality" in body["reason"]
    # denying every model is a hard failure
    r = client.post("/v1/route", json={"prompt": "x", "constraints": {"denied_models": POOL.names}})
    assert r.status_code == 422 and "denied_models" in r.json()["detail"]


@pytest.mark.parametrize("payload", [
    {},                                                        # neither prompt nor messages
    {"prompt": "a", "messages": [{"role": "user", "content": "b"}]},  # both
    {"prompt": 5},                                             # wrong type
    {"prompt": "a", "colour": "blue"},                         # unknown field
    {"prompt": ""},                                            # empty
    {"prompt": "   \n"},                                       # blank
    {"messages": []},                                          # no messages
    {"messages": [{"role": "wizard", "content": "hi"}]},       # unknown role
    {"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]},
    {"prompt": "a", "preferences": {"quality_weight": -1}},    # negative weight
    {"prompt": "a", "preferences": {"quality_weight": 0, "cost_weight": 0, "latency_weight": 0}},
    {"prompt": "a", "preferences": {"cost_weight": "lots"}},
    {"prompt": "a", "constraints": {"min_quality": 2}},
    {"prompt": "a", "max_tokens": 0},
    {"prompt": "a", "preset": "nope"},
])
def test_bad_input_is_422_with_a_message(client: TestClient, payload: dict[str, Any]) -> None:
    r = client.post("/v1/route", json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_an_empty_prompt_is_one_issue_at_the_field(client: TestClient) -> None:
    """Not also "Input should be None" from the optional field's other branch."""
    r = client.post("/v1/route", json={"prompt": ""})
    assert r.status_code == 422
    assert [(i["loc"], i["type"]) for i in r.json()["detail"]] == [(["body", "prompt"], "string_too_short")]


def test_nan_weights_malformed_json_and_invalid_utf8(client: TestClient) -> None:
    h = {"content-type": "application/json"}
    r = client.post("/v1/route", content=b'{"prompt": "a", "preferences": {"cost_weight": NaN}}', headers=h)
    assert r.status_code == 422 and "cost_weight" in r.text
    r = client.post("/v1/route", content=b'{"prompt": "a", "preferences": {"cost_weight": Infinity}}', headers=h)
    assert r.status_code == 422
    r = client.post("/v1/route", content=b'{"prompt": "a"', headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = client.post("/v1/route", content=b'{"prompt": "\xff\xfe bad"}', headers=h)
    assert r.status_code == 400
    r = client.post("/v1/route", content=b'[1, 2]', headers=h)
    assert r.status_code == 422
    # a lone surrogate is valid JSON but not UTF-8: rejected in `prompt`, cleaned in message text
    r = client.post("/v1/route", content=b'{"prompt": "hello \\ud800 world"}', headers=h)
    assert r.status_code == 422, r.text
    r = client.post("/v1/route", headers=h,
                    content=b'{"messages": [{"role": "user", "content": "hello \\ud800 world"}]}')
    assert r.status_code == 200, r.text
    r = client.post("/v1/route", content=b'{"prompt": "a", "constraints": {"allowed_models": ["\\udc80"]}}', headers=h)
    assert r.status_code == 422 and r.json()["detail"]
    assert clean_text("a\ud800b") == "a?b"
    # the service is still up
    assert client.post("/v1/route", json={"prompt": "still alive?"}).status_code == 200


def test_oversized_prompt_and_body() -> None:
    with make_client(max_prompt_chars=100, max_body_bytes=4096) as c:
        r = c.post("/v1/route", json={"prompt": "x" * 101})
        assert r.status_code == 422 and "max_prompt_chars" in r.json()["detail"]
        r = c.post("/v1/route", json={"prompt": "x" * 5000})
        assert r.status_code == 413 and "4096" in r.json()["detail"]

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
            yield b'{"prompt": "'
            for _ in range(10):
                yield b"y" * 1000
            yield b'"}'
        r = c.post("/v1/route", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/v1/route", json={"prompt": "fits"}).status_code == 200


def test_long_prompt_is_truncated_and_reported() -> None:
    with make_client(StubPredictor(max_length=8)) as c:
        r = c.post("/v1/route", json={"prompt": " ".join(["word"] * 20)})
        assert r.status_code == 200 and r.json()["truncated"] is True
        r = c.post("/v1/route", json={"prompt": "short one"})
        assert r.json()["truncated"] is False


# ---- other endpoints -----------------------------------------------------------------------------

def test_batch_route_keeps_order_and_names_bad_item(client: TestClient) -> None:
    reqs = [{"prompt": "a"}, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
        "preferences": {"quality_weight": 0.01, "cost_weight": 1}},
        {"prompt": "c", "preferences": {"quality_weight": 0.01, "cost_weight": 1}}]
    r = client.post("/v1/route/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    models = [x["model"] for x in r.json()["results"]]
    assert models[1:] == ["big", "small"] and len(set(x["request_id"] for x in r.json()["results"])) == 3
    r = client.post("/v1/route/batch", json={"requests": [{"prompt": "ok"}, {"prompt": " "}]})
    assert r.status_code == 200 and r.json()["results"][1] == {
        "index": 1, "error": {"type": "invalid_request", "message": "requests[1]: prompt is empty"}}
    # a body that is not a batch is still a 422 for the whole call
    for body in ({"requests": []}, {"requests": {"prompt": "ok"}}, {"prompt": "ok"}, [{"prompt": "ok"}],
                 {"requests": [{"prompt": "ok"}], "surprise": 1}):
        r = client.post("/v1/route/batch", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body", (body, r.text)
    with make_client(max_batch_requests=2) as c:
        r = c.post("/v1/route/batch", json={"requests": [{"prompt": "a"}] * 3})
        assert r.status_code == 422 and "max_batch_requests" in r.json()["detail"]


def test_batch_route_answers_bad_items_in_place_and_routes_the_others() -> None:
    stub = StubPredictor()
    with make_client(stub) as c:
        reqs = [{"prompt": "good one", "preferences": {"quality_weight": 1}},
                {"prompt": "bad", "constraints": {"allowed_models": ["gpt-17"]}},
                {"prompt": "good two", "preferences": {"quality_weight": 0.01, "cost_weight": 1}}]
        served_before = sum(stub.batches)
        r = c.post("/v1/route/batch", json={"requests": reqs})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == 3
        assert results[0]["model"] == "big" and results[2]["model"] == "small"
        assert results[0]["request_id"] != results[2]["request_id"]
        assert set(results[1]) == {"index", "error"} and results[1]["index"] == 1
        assert results[1]["error"]["type"] == "invalid_request"
        assert results[1]["error"]["message"].startswith(
            "requests[1]: constraints.allowed_models: unknown model 'gpt-17'")
        assert sum(stub.batches) - served_before == 2  # only the routable items are predicted

        # every kind of per-item error; the same request alone is a 422 with the same message
        bad = [({"prompt": "x", "preset": "no-such-preset"}, "invalid_request", "unknown preset"),
               ({"messages": [{"role": "user", "content": "  "}]}, "invalid_request", "messages is empty"),
               ({"messages": [{"role": "user", "content": [  # no model accepts audio
                   {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]},
                "no_eligible_model", "audio"),
               ({"prompt": "x", "constraints": {"denied_models": ["big", "mid", "small"]}},
                "no_eligible_model", ""),
               ({"prompt": "x", "preferences": {"quality_weight": 0, "cost_weight": 0}},
                "invalid_request", "")]
        r = c.post("/v1/route/batch", json={"requests": [{"prompt": "ok"}] + [b for b, _, _ in bad]})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert "model" in results[0]
        for i, (item, kind, words) in enumerate(bad, start=1):
            assert results[i]["index"] == i and results[i]["error"]["type"] == kind, (item, results[i])
            message = results[i]["error"]["message"]
            assert message.startswith(f"requests[{i}]: ") and words in message, (item, message)
            single = c.post("/v1/route", json=item)
            assert single.status_code == 422 and single.json()["detail"] == message.split(": ", 1)[1]

        # nothing routable: still 200, nothing predicted
        served_before = sum(stub.batches)
        r = c.post("/v1/route/batch", json={"requests": [{"prompt": " "}, {"prompt": "x", "preset": "nope"}]})
        assert r.status_code == 200 and [x["index"] for x in r.json()["results"]] == [0, 1]
        assert sum(stub.batches) == served_before
        text = c.get("/metrics").text
        assert 'router_http_requests_total{endpoint="/v1/route/batch",method="POST",status="200"} 3.0' in text


def test_batch_route_validates_each_item_on_its_own() -> None:
    """An item that fails schema validation (empty prompt string, negative weight, unknown field,
    max_tokens above the limit, ...) gets its own error naming the field; the valid items are still
    routed (such an item used to fail the whole batch with 422)."""
    stub = StubPredictor()
    with make_client(stub) as c:
        bad = [({"prompt": ""}, "prompt: String should have at least 1 character"),
               ({"prompt": "x", "preferences": {"cost_weight": -1}},
                "preferences.cost_weight: Input should be greater than or equal to 0"),
               ({"prompt": "x", "surprise": 1}, "surprise: Extra inputs are not permitted"),
               ({"prompt": "x", "max_tokens": 10_000_001}, "max_tokens: Input should be less than or equal to"),
               ({"prompt": 7}, "prompt: Input should be a valid string"),
               ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "exactly one of 'prompt' or 'messages'"),
               ({"messages": [{"role": "robot", "content": "y"}]}, "messages[0].role: Input should be"),
               ("just a string", "must be an object with 'prompt' or 'messages' (a route request), got str")]
        reqs: list[Any] = [{"prompt": "good one"}]
        for item, _ in bad:
            reqs += [item, {"prompt": f"good after {len(reqs)}"}]
        served_before = sum(stub.batches)
        r = c.post("/v1/route/batch", json={"requests": reqs})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert len(results) == len(reqs) == 2 * len(bad) + 1
        assert all("model" in results[i] for i in range(0, len(reqs), 2))
        assert len({results[i]["request_id"] for i in range(0, len(reqs), 2)}) == len(bad) + 1
        assert sum(stub.batches) - served_before == len(bad) + 1  # only the valid items are predicted
        for k, (item, words) in enumerate(bad):
            i = 2 * k + 1
            assert results[i]["index"] == i and results[i]["error"]["type"] == "invalid_request"
            message = results[i]["error"]["message"]
            assert message.startswith(f"requests[{i}]: ") and words in message, (item, message)
            if isinstance(item, dict):  # /v1/route refuses the same item with the same issue
                single = c.post("/v1/route", json=item)
                assert single.status_code == 422
                issue = single.json()["detail"][0]
                assert issue["msg"] in message, (item, message, issue)
        metrics = c.get("/metrics").text
        assert f'router_rejected_total{{reason="validation"}} {2.0 * len(bad) - 1}' in metrics


def test_predict_endpoint(client: TestClient) -> None:
    r = client.post("/v1/predict", json={"prompts": ["one two", "three"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["models"] == POOL.names and len(body["predictions"]) == 2
    assert body["input_tokens"] == [2, 1] and body["truncated"] == [False, False]
    assert 0 <= body["predictions"][0]["small"]["quality"] <= 1
    r = client.post("/v1/predict", json={"prompts": ["fine", " "]})
    assert r.status_code == 422 and "prompts[1]" in r.json()["detail"]
    with make_client(max_batch_requests=3) as c:
        r = c.post("/v1/predict", json={"prompts": ["a", "b", "c", "d"]})
        assert r.status_code == 422 and "max_batch_requests" in r.json()["detail"]


def test_models_health_ready(client: TestClient) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == set(POOL.names)
    assert models["big"]["modalities"] == ["text", "image", "tools"] and models["big"]["aliases"] == ["big-latest"]
    assert models["small"]["proxyable"] is False and "balanced" in r.json()["presets"]
    h = client.get("/healthz").json()
    assert h["provider"] == "CPUExecutionProvider" and h["device"] == "cpu"
    assert h["requested_device"] == "auto" and h["device_fallback"] is True
    assert client.get("/readyz").json() == {"ready": True, "detail": "ready"}
    with make_client(device="cpu") as c:
        assert c.get("/healthz").json()["device_fallback"] is False
    assert h["model_file"] is None  # the stand-in has no model file
    cuda = StubPredictor(provider="CUDAExecutionProvider")
    cuda.model_file = "router.fp16.onnx"  # type: ignore[attr-defined]
    with make_client(cuda) as c:
        assert c.get("/healthz").json()["device"] == "cuda"
        assert c.get("/healthz").json()["device_fallback"] is False
        assert c.get("/healthz").json()["model_file"] == "router.fp16.onnx"


def test_failed_warm_up_keeps_the_service_up_but_not_ready() -> None:
    class NoWarmUp(StubPredictor):
        def predict(self, prompts: list[str], features: list[RequestFeatures] | None = None) -> Predictions:
            if prompts == ["warm-up"]:
                raise RuntimeError("cold")
            return super().predict(prompts, features)

    with make_client(NoWarmUp()) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json() == {"ready": False, "detail": "warming up"}
        assert c.get("/healthz").status_code == 200
        assert c.post("/v1/route", json={"prompt": "still routes"}).status_code == 200


def test_api_key_required_except_health() -> None:
    with make_client(api_key="s3cret") as c:
        assert c.post("/v1/route", json={"prompt": "a"}).status_code == 401
        r = c.post("/v1/route", json={"prompt": "a"}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.get("/metrics").status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.post("/v1/route", json={"prompt": "a"}, headers=ok).status_code == 200
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        schema = c.get("/openapi.json", headers=ok).json()
        assert "HTTPBearer" in schema["components"]["securitySchemes"]
        assert schema["paths"]["/v1/route"]["post"]["security"] == [{"HTTPBearer": []}]
        assert "security" not in schema["paths"]["/healthz"]["get"]


def test_metrics_are_per_app_and_count_requests() -> None:
    with make_client() as a, make_client() as b:
        for _ in range(3):
            assert a.post("/v1/route", json={"prompt": "q", "preferences": {"quality_weight": 1}}).status_code == 200
        a.post("/v1/route", json={"prompt": ""})
        a.get("/no/such/path")
        text = a.get("/metrics").text
        assert 'router_http_requests_total{endpoint="/v1/route",method="POST",status="200"} 3.0' in text
        assert 'router_http_requests_total{endpoint="/v1/route",method="POST",status="422"} 1.0' in text
        assert 'router_http_requests_total{endpoint="other",method="GET",status="404"} 1.0' in text
        assert 'router_decisions_total{model="big"} 3.0' in text
        assert "router_batch_size_count" in text and "router_queue_depth 0.0" in text
        assert "router_http_request_duration_seconds_bucket" in text
        other = b.get("/metrics").text
        assert 'router_decisions_total{model="big"}' not in other


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


# ---- the batcher itself ----------------------------------------------------------------------------

def test_batcher_scatters_results_and_respects_limits() -> None:
    seen: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [i * 10 for i in items]

    async def go() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn, max_batch_size=4, max_wait_ms=20, max_queue=6)
        await b.start()
        results = await asyncio.gather(*(b.run([i], 1.0) for i in range(6)))
        assert [r[0] for r in results] == [i * 10 for i in range(6)]
        assert [len(s) for s in seen] == [4, 2]
        with pytest.raises(QueueFullError):
            b.submit(list(range(7)))
        assert await b.run([1, 2, 3], 1.0) == [10, 20, 30]
        await b.stop()
        assert not b.running

    asyncio.run(go())


def test_batcher_skips_callers_that_timed_out() -> None:
    calls: list[list[str]] = []

    def fn(items: list[str]) -> list[str]:
        calls.append(items)
        time.sleep(0.1)
        return items

    async def go() -> None:
        b: DynamicBatcher[str, str] = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=0, max_queue=10)
        await b.start()
        first = asyncio.ensure_future(b.run(["first"], 1.0))
        await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await b.run(["impatient"], 0.02)
        assert await first == ["first"]
        assert await b.run(["third"], 1.0) == ["third"]
        await b.stop()

    asyncio.run(go())
    assert ["impatient"] not in calls


# ---- messages flattening and config --------------------------------------------------------------

def test_flatten_messages() -> None:
    text, img, aud, tools = flatten_messages([{"role": "user", "content": "just this"}])
    assert (text, img, aud, tools) == ("just this", False, False, False)
    text, *_ = flatten_messages([{"role": "system", "content": "be brief"},
                                 {"role": "user", "content": [{"type": "text", "text": "hi"},
                                                              {"type": "image_url", "image_url": {"url": "u"}}]}])
    assert text == "system: be brief\nuser: hi\n[image]"
    _, img, aud, tools = flatten_messages([{"role": "user", "content": [{"type": "input_audio"}]},
                                           {"role": "tool", "content": "42"}])
    assert (img, aud, tools) == (False, True, True)


def test_settings_from_yaml_env_and_errors(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_config = load_settings("configs/serve.yaml")
    assert repo_config.max_batch_size >= 1 and repo_config.default_preset in repo_config.presets
    f = tmp_path / "serve.yaml"
    f.write_text("max_batch_size: 4\npresets:\n  thrifty: {cost_weight: 2}\ndefault_preset: thrifty\n")
    monkeypatch.setenv("NEURAL_ROUTER_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("NEURAL_ROUTER_PRESETS__THRIFTY__LATENCY_WEIGHT", "0.5")
    s = load_settings(f, max_queue=7, port=None)
    assert s.max_batch_size == 16 and s.max_queue == 7 and s.port == 8000
    assert s.presets["thrifty"].cost_weight == 2 and s.presets["thrifty"].latency_weight == 0.5
    f.write_text("max_batch_size: 4\nmax_batch: 3\n")
    with pytest.raises(ConfigError, match="max_batch"):
        load_settings(f)
    f.write_text("presets: {a: {quality_weight: -1}}\ndefault_preset: a\n")
    with pytest.raises(ConfigError, match="quality_weight"):
        load_settings(f)
    f.write_text("[unclosed")
    with pytest.raises(ConfigError, match="YAML"):
        load_settings(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")


def test_env_override_of_one_preset_value_keeps_the_other_presets(tmp_path: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The example in the header of configs/serve.yaml: one nested value from the environment, with
    or without a config file, changes that value only (it used to replace the whole presets map
    without --config, and start-up failed: "default_preset 'balanced' is not one of the presets")."""
    defaults = {name: p.model_dump() for name, p in ServeSettings().presets.items()}
    assert defaults["cheap"]["cost_weight"] == 1.0
    monkeypatch.setenv("NEURAL_ROUTER_PRESETS__CHEAP__COST_WEIGHT", "2")
    expected = {**defaults, "cheap": {**defaults["cheap"], "cost_weight": 2.0}}
    for s in (ServeSettings(), load_settings(), load_settings("configs/serve.yaml")):
        assert {name: p.model_dump() for name, p in s.presets.items()} == expected
        assert s.default_preset == "balanced"
    # a preset the defaults lack is added; a bad value is still a clear error naming the variable's key
    monkeypatch.setenv("NEURAL_ROUTER_PRESETS__THRIFTY__COST_WEIGHT", "3")
    assert set(load_settings().presets) == {*defaults, "thrifty"}
    monkeypatch.setenv("NEURAL_ROUTER_PRESETS__CHEAP__COST_WEIGHT", "-1")
    with pytest.raises(ConfigError, match="presets.cheap.cost_weight"):
        load_settings()
    monkeypatch.delenv("NEURAL_ROUTER_PRESETS__CHEAP__COST_WEIGHT")
    monkeypatch.delenv("NEURAL_ROUTER_PRESETS__THRIFTY__COST_WEIGHT")
    # a presets map in the config file (or a keyword argument) replaces the built-in presets
    f = tmp_path / "serve.yaml"
    f.write_text("presets:\n  thrifty: {cost_weight: 2}\ndefault_preset: thrifty\n")
    assert set(load_settings(f).presets) == {"thrifty"}
    assert set(ServeSettings(presets={"only": {"cost_weight": 1}}, default_preset="only").presets) == {"only"}



def test_endpoint_overrides_must_name_pool_models() -> None:
    s = ServeSettings(endpoints={"big-latest": EndpointOverride(endpoint="http://127.0.0.1:9/v1", api_model="b")})
    app = create_app(s, StubPredictor())
    spec = app.state.service.state.pool.get("big")
    assert spec.endpoint == "http://127.0.0.1:9/v1" and spec.api_model == "b"
    with pytest.raises(ValueError, match="not in the router's pool"):
        create_app(ServeSettings(endpoints={"gpt-17": EndpointOverride(endpoint="http://x/v1")}), StubPredictor())
