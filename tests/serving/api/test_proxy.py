"""The OpenAI-compatible proxy in process against a real fake-LLM server process: candidates
with endpoints only, client errors passed through, decisions logged under the model that answered,
and answers graded when a reference comes with the request."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from neural_router.feedback.store import FeedbackStore, UnknownRequestError
from neural_router.pool import ModelPool

from neural_router.serving.api.app import create_app
from neural_router.serving.config import EndpointOverride, ServeSettings
from tests.serving.helpers import (RankedStub, db_url, fake_requests, metric, onnx_client, start_fake_llm, stop,
                                   wait_for_outcome)


def test_proxy_skips_models_without_endpoint_and_passes_client_errors(tiny_router_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pool = ModelPool.from_yaml(tiny_router_dir / "models.yaml")
    proc, url = start_fake_llm("--require-key", "right")
    try:
        monkeypatch.setenv("KEY_RIGHT", "right")
        monkeypatch.setenv("KEY_WRONG", "wrong")
        settings = ServeSettings(endpoints={
            "mid": EndpointOverride(endpoint=f"{url}/v1", api_model="api-mid", api_key_env="KEY_RIGHT"),
            "small": EndpointOverride(endpoint=f"{url}/v1", api_model="api-small", api_key_env="KEY_WRONG")})
        with TestClient(create_app(settings, RankedStub(pool))) as c:
            msgs = [{"role": "user", "content": "hi"}]
            # big (best quality) has no endpoint: mid is the best model that can be proxied
            r = c.post("/v1/chat/completions", json={"model": "router:quality", "messages": msgs})
            assert r.status_code == 200 and r.json()["model"] == "mid", r.text
            # the backend refuses small's key: a client error, returned as is, no fallback tried
            n = len(fake_requests(url))
            r = c.post("/v1/chat/completions", json={"model": "small", "messages": msgs})
            assert r.status_code == 401 and r.headers["x-router-model"] == "small"
            assert r.json()["error"]["message"] == "bad key" and len(fake_requests(url)) == n + 1
            r = c.post("/v1/chat/completions", json={"model": "big", "messages": msgs})
            assert r.status_code == 400 and r.json()["error"]["code"] == "no_endpoint"
            assert all(x["model"] != "big" for x in fake_requests(url))
        with TestClient(create_app(ServeSettings(), RankedStub(pool))) as c:
            r = c.post("/v1/chat/completions", json={"model": "router", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 503 and "no model in the pool has an endpoint" in r.json()["error"]["message"]
    finally:
        stop(proc)


def test_proxy_logs_decisions_and_grades_answers_with_a_reference(predictor: Any, tmp_path: Path) -> None:
    proc, url = start_fake_llm()
    try:
        endpoints = {m: {"endpoint": f"{url}/v1", "api_model": f"api-{m}"} for m in ("big", "mid", "small")}
        with onnx_client(predictor, tmp_path, endpoints=endpoints, scorer={"type": "numeric"}) as c, \
                FeedbackStore.from_url(db_url(tmp_path)) as store:
            ask = [{"role": "user", "content": "What is 6 * 7? The answer is 42"}]
            r = c.post("/v1/chat/completions", json={"model": "router", "messages": ask,
                                                     "metadata": {"reference": "42", "user": "u1"}})
            assert r.status_code == 200, r.text
            rid, served = r.headers["x-router-request-id"], r.headers["x-router-model"]
            assert float(r.headers["x-router-propensity"]) == 1.0
            assert store.get_decision(rid).model == served
            (o,) = wait_for_outcome(store, rid)
            assert (o.model, o.score, o.output_tokens) == (served, 1.0, 3) and 0 < o.latency_ms < 5000
            spec = predictor.pool.get(served)
            assert o.cost_usd == pytest.approx((3 * spec.input_price_per_1m + 3 * spec.output_price_per_1m) / 1e6)
            forwarded = httpx.get(f"{url}/requests").json()[-1]["body"]
            assert forwarded["metadata"] == {"user": "u1"}  # the reference never reaches the backend

            # a wrong reference in the header scores 0; a stream is graded once complete
            r = c.post("/v1/chat/completions", json={"model": "router:cheap", "messages": ask},
                       headers={"x-router-reference": "41"})
            (o,) = wait_for_outcome(store, r.headers["x-router-request-id"])
            assert o.score == 0.0
            r = c.post("/v1/chat/completions", json={"model": "router", "messages": ask, "stream": True,
                                                     "metadata": {"reference": "42"}})
            assert r.status_code == 200 and "[DONE]" in r.text
            (o,) = wait_for_outcome(store, r.headers["x-router-request-id"])
            assert o.score == 1.0 and o.response and o.response.endswith("42")
            # no reference: logged but not graded; a model named directly: not a routing decision
            r = c.post("/v1/chat/completions", json={"model": "router", "messages": ask})
            rid = r.headers["x-router-request-id"]
            assert store.get_decision(rid).model == r.headers["x-router-model"]
            r = c.post("/v1/chat/completions", json={"model": "mid", "messages": ask,
                                                     "metadata": {"reference": "42"}})
            assert r.status_code == 200
            with pytest.raises(UnknownRequestError):
                store.get_decision(r.headers["x-router-request-id"])
            time.sleep(0.3)
            assert store.get_outcomes(rid) == []
            # the client can still report an outcome for the proxied call
            assert c.post("/v1/feedback", json={"request_id": rid, "score": 0.5}).status_code == 200
            text = c.get("/metrics").text
            assert metric(text, 'router_feedback_received_total{source="scorer",status="ok"}') == 3
    finally:
        stop(proc)


def test_proxy_fallback_credits_the_model_that_answered(tiny_router_dir: Path, tmp_path: Path) -> None:
    """When the router's choice fails and a fallback answers, the logged decision names the model
    that answered (not the chosen model, which never answered), the choice is kept in the
    decision's context, and feedback naming another model is refused."""
    pool = ModelPool.from_yaml(tiny_router_dir / "models.yaml")
    proc, url = start_fake_llm("--fail-models", "api-big", "--fail-status", "500")
    ask = [{"role": "user", "content": "What is 6 * 7? The answer is 42"}]
    try:
        endpoints = {m: {"endpoint": f"{url}/v1", "api_model": f"api-{m}"} for m in ("big", "mid", "small")}
        settings = ServeSettings(feedback_url=db_url(tmp_path), endpoints=endpoints, scorer={"type": "numeric"})
        with TestClient(create_app(settings, RankedStub(pool))) as c, FeedbackStore.from_url(db_url(tmp_path)) as store:
            # the stub ranks big > mid > small: "quality" chooses big, whose backend answers 500
            r = c.post("/v1/chat/completions", json={"model": "router:quality", "messages": ask})
            assert r.status_code == 200, r.text
            assert (r.headers["x-router-model"], r.headers["x-router-attempts"]) == ("mid", "2")
            rid = r.headers["x-router-request-id"]
            d = store.get_decision(rid)
            assert d.model == "mid" and d.propensity == 1.0
            assert d.context["proxy"] == {"chosen_model": "big", "served_model": "mid", "attempts": 2}
            r = c.post("/v1/feedback", json={"request_id": rid, "score": 0, "model": "big"})
            assert r.status_code == 422, r.text
            assert "answered by model 'mid'" in r.json()["detail"] and "'big' failed" in r.json()["detail"]
            r = c.post("/v1/feedback", json={"request_id": rid, "score": 0})
            assert r.status_code == 200 and r.json()["model"] == "mid", r.text
            assert [o.model for o in store.get_outcomes(rid)] == ["mid"]
            # naming the model that answered is fine; an alias of another model is not
            rid2 = c.post("/v1/chat/completions", json={"model": "router:quality", "messages": ask}
                          ).headers["x-router-request-id"]
            assert c.post("/v1/feedback", json={"request_id": rid2, "score": 1, "model": "big-alias"}
                          ).status_code == 422
            assert c.post("/v1/feedback", json={"request_id": rid2, "score": 1, "model": "mid"}).status_code == 200

            # the scorer grades the fallback's answer under the fallback, streamed or not
            for stream in (False, True):
                r = c.post("/v1/chat/completions", json={"model": "router:quality", "messages": ask,
                                                         "stream": stream, "metadata": {"reference": "42"}})
                assert r.status_code == 200 and r.headers["x-router-model"] == "mid", r.text
                rid3 = r.headers["x-router-request-id"]
                (o,) = wait_for_outcome(store, rid3)
                assert (o.model, o.score) == ("mid", 1.0) and store.get_decision(rid3).model == "mid"
            # without a fallback the decision is the router's choice, served by it
            r = c.post("/v1/chat/completions", json={"model": "router:cheap", "messages": ask})
            d = store.get_decision(r.headers["x-router-request-id"])
            assert d.model == r.headers["x-router-model"] == d.context["proxy"]["chosen_model"]
            assert d.context["proxy"]["attempts"] == 1
            # a /v1/route decision still takes feedback for any predicted model (the client calls it)
            rid4 = c.post("/v1/route", json={"prompt": "hi", "preset": "quality"}).json()["request_id"]
            assert store.get_decision(rid4).model == "big" and "proxy" not in store.get_decision(rid4).context
            assert c.post("/v1/feedback", json={"request_id": rid4, "score": 1, "model": "mid"}).status_code == 200

        # every backend down: the decision keeps the choice, served by nobody, and takes no feedback
        down = {m: {"endpoint": "http://127.0.0.1:9/v1"} for m in ("big", "mid", "small")}
        with TestClient(create_app(ServeSettings(feedback_url=db_url(tmp_path), endpoints=down), RankedStub(pool))) as c:
            r = c.post("/v1/chat/completions", json={"model": "router:quality", "messages": ask})
            assert r.status_code == 502
            rid5 = r.headers["x-router-request-id"]
            r = c.post("/v1/feedback", json={"request_id": rid5, "score": 0})
            assert r.status_code == 422 and "no model answered" in r.json()["detail"], r.text
        with FeedbackStore.from_url(db_url(tmp_path)) as store:
            d = store.get_decision(rid5)
            assert d.model == "big" and d.context["proxy"] == {"chosen_model": "big", "served_model": None,
                                                               "attempts": 3}
            assert store.get_outcomes(rid5) == []
    finally:
        stop(proc)
