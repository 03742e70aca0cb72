"""/v1/route, /v1/route/batch, /v1/predict, /v1/models, /healthz and /readyz in process (FastAPI
TestClient) with the deterministic stub predictor (tests/serving/helpers.py), which has the real
predictor's interface, so these tests pin the HTTP behaviour; the real ONNX router is exercised
end to end in tests/serving/test_e2e.py."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from neural_router.inference.interface import Predictions, RequestFeatures

from tests.serving.helpers import POOL, StubPredictor, make_client

JSON = {"content-type": "application/json"}
CHEAP = {"quality_weight": 0.01, "cost_weight": 1}


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


def test_quality_only_preferences_pick_the_best_model(client: TestClient) -> None:
    # the stub ranks big first
    r = client.post("/v1/route", json={"prompt": "hi", "preferences": {"quality_weight": 1}})
    assert r.json()["model"] == "big"


def test_explicit_preferences_override_the_preset(client: TestClient) -> None:
    r = client.post("/v1/route", json={"prompt": "hi", "preset": "cheap", "preferences": CHEAP})
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


def test_constraints_accept_aliases(client: TestClient) -> None:
    r = client.post("/v1/route", json={"prompt": "x", "constraints": {"allowed_models": ["big-latest", "small"]}})
    assert r.status_code == 200 and r.json()["model"] in {"big", "small"}
    assert "mid" not in r.json()["fallbacks"]


@pytest.mark.parametrize("constraints", [{"denied_models": ["gpt-17"]}, {"allowed_models": []}])
def test_unknown_or_empty_model_lists_are_422(client: TestClient, constraints: dict[str, Any]) -> None:
    r = client.post("/v1/route", json={"prompt": "x", "constraints": constraints})
    assert r.status_code == 422
    if "denied_models" in constraints:
        assert "gpt-17" in r.json()["detail"]


def test_soft_constraints_nobody_meets_give_the_best_compromise(client: TestClient) -> None:
    # nobody reaches quality 0.99: best compromise, violation named
    r = client.post("/v1/route", json={"prompt": "x", "constraints": {"min_quality": 0.99}})
    assert r.status_code == 200
    body = r.json()
    assert body["feasible"] is False and body["violated"] == ["min_quality"]
    assert "min_quality" in body["reason"]


def test_denying_every_model_is_a_hard_failure(client: TestClient) -> None:
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


@pytest.mark.parametrize(("content", "status", "words"), [
    (b'{"prompt": "a", "preferences": {"cost_weight": NaN}}', 422, "cost_weight"),
    (b'{"prompt": "a", "preferences": {"cost_weight": Infinity}}', 422, ""),
    (b'{"prompt": "a"', 422, "json_invalid"),
    (b'{"prompt": "\xff\xfe bad"}', 400, ""),
    (b'[1, 2]', 422, ""),
    # a lone surrogate is valid JSON but not UTF-8: rejected in `prompt` ...
    (b'{"prompt": "hello \\ud800 world"}', 422, ""),
    (b'{"prompt": "a", "constraints": {"allowed_models": ["\\udc80"]}}', 422, ""),
    # ... and cleaned in message text
    (b'{"messages": [{"role": "user", "content": "hello \\ud800 world"}]}', 200, ""),
], ids=["nan", "infinity", "malformed", "invalid-utf8", "not-an-object", "surrogate-prompt",
        "surrogate-model", "surrogate-message"])
def test_nan_weights_malformed_json_and_invalid_utf8(client: TestClient, content: bytes, status: int,
                                                     words: str) -> None:
    r = client.post("/v1/route", content=content, headers=JSON)
    assert r.status_code == status, r.text
    assert words in r.text
    if status == 422:
        assert r.json()["detail"]
    # the service is still up
    assert client.post("/v1/route", json={"prompt": "still alive?"}).status_code == 200


def test_malformed_json_is_one_json_invalid_issue(client: TestClient) -> None:
    r = client.post("/v1/route", content=b'{"prompt": "a"', headers=JSON)
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"


def test_prompt_longer_than_max_prompt_chars_is_422() -> None:
    with make_client(max_prompt_chars=100) as c:
        r = c.post("/v1/route", json={"prompt": "x" * 101})
        assert r.status_code == 422 and "max_prompt_chars" in r.json()["detail"]
        assert c.post("/v1/route", json={"prompt": "x" * 100}).status_code == 200


def test_long_prompt_is_truncated_and_reported() -> None:
    with make_client(StubPredictor(max_length=8)) as c:
        r = c.post("/v1/route", json={"prompt": " ".join(["word"] * 20)})
        assert r.status_code == 200 and r.json()["truncated"] is True
        r = c.post("/v1/route", json={"prompt": "short one"})
        assert r.json()["truncated"] is False


# ---- /v1/route/batch -----------------------------------------------------------------------------

def test_batch_route_keeps_order(client: TestClient) -> None:
    reqs = [{"prompt": "a"}, {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}], "preferences": CHEAP},
        {"prompt": "c", "preferences": CHEAP}]
    r = client.post("/v1/route/batch", json={"requests": reqs})
    assert r.status_code == 200, r.text
    models = [x["model"] for x in r.json()["results"]]
    assert models[1:] == ["big", "small"] and len(set(x["request_id"] for x in r.json()["results"])) == 3


def test_batch_route_names_a_bad_item(client: TestClient) -> None:
    r = client.post("/v1/route/batch", json={"requests": [{"prompt": "ok"}, {"prompt": " "}]})
    assert r.status_code == 200 and r.json()["results"][1] == {
        "index": 1, "error": {"type": "invalid_request", "message": "requests[1]: prompt is empty"}}


@pytest.mark.parametrize("body", [{"requests": []}, {"requests": {"prompt": "ok"}}, {"prompt": "ok"},
                                  [{"prompt": "ok"}], {"requests": [{"prompt": "ok"}], "surprise": 1}])
def test_a_body_that_is_not_a_batch_is_422(client: TestClient, body: Any) -> None:
    r = client.post("/v1/route/batch", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][0] == "body", (body, r.text)


def test_batch_route_refuses_more_than_max_batch_requests() -> None:
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
    routed."""
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


# ---- /v1/predict ---------------------------------------------------------------------------------

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


# ---- /v1/models, /healthz, /readyz ---------------------------------------------------------------

def test_models_lists_the_pool_and_presets(client: TestClient) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    models = {m["name"]: m for m in r.json()["models"]}
    assert set(models) == set(POOL.names)
    assert models["big"]["modalities"] == ["text", "image", "tools"] and models["big"]["aliases"] == ["big-latest"]
    assert models["small"]["proxyable"] is False and "balanced" in r.json()["presets"]


def test_health_reports_the_device(client: TestClient) -> None:
    h = client.get("/healthz").json()
    assert h["provider"] == "CPUExecutionProvider" and h["device"] == "cpu"
    assert h["requested_device"] == "auto" and h["device_fallback"] is True
    assert h["model_file"] is None  # the stand-in has no model file
    with make_client(device="cpu") as c:
        assert c.get("/healthz").json()["device_fallback"] is False


def test_health_on_cuda_names_the_model_file() -> None:
    cuda = StubPredictor(provider="CUDAExecutionProvider")
    cuda.model_file = "router.fp16.onnx"  # type: ignore[attr-defined]
    with make_client(cuda) as c:
        assert c.get("/healthz").json()["device"] == "cuda"
        assert c.get("/healthz").json()["device_fallback"] is False
        assert c.get("/healthz").json()["model_file"] == "router.fp16.onnx"


def test_ready_once_warmed_up(client: TestClient) -> None:
    assert client.get("/readyz").json() == {"ready": True, "detail": "ready"}


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


def test_model_response_is_the_models_json_and_escapes_lone_surrogates() -> None:
    import json

    from neural_router.serving.api.routes import model_response
    from neural_router.serving.api.schemas import RouteResponse

    fields: dict[str, Any] = dict(
        request_id="r1", model="m-é", predictions={"m-é": {"quality": 0.25, "cost_usd": 1e-05, "latency_ms": 3.5}},
        fallbacks=[], reason="best", router_version="v1", truncated=False, feasible=True, violated=[],
        propensity=1.0, exploration="greedy")
    plain = RouteResponse(**fields)
    r = model_response(plain)
    assert r.media_type == "application/json" and json.loads(r.body) == plain.model_dump(mode="json")
    odd = RouteResponse(**{**fields, "reason": "best \ud800"})  # pydantic cannot write it as UTF-8
    r = model_response(odd)
    assert r.body.isascii() and json.loads(r.body)["reason"] == "best \ud800"
