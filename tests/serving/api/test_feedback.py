"""Learning from outcomes through the API: decisions logged by /v1/route and /v1/route/batch,
POST /v1/feedback, exploration propensities, and durability across kill -9.

Everything runs on the real tiny ONNX router (``tiny_router_dir``) and real SQLite files; the
kill -9 test runs the service as ``python -m neural_router serve`` in a subprocess."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from neural_router.feedback.store import FeedbackStore

from neural_router.serving.api.app import create_app
from neural_router.serving.config import ServeSettings
from tests.serving.helpers import db_url, metric, onnx_client


def test_route_feedback_round_trip_and_error_codes(predictor: Any, version: str, tmp_path: Path) -> None:
    with onnx_client(predictor, tmp_path, score_range=(0, 10)) as c:
        r = c.post("/v1/route", json={"prompt": "solve the integral of x^2", "preset": "cheap"})
        assert r.status_code == 200, r.text
        route = r.json()
        rid, chosen = route["request_id"], route["model"]
        assert route["propensity"] == 1.0 and route["exploration"] == "greedy"

        r = c.post("/v1/feedback", json={"request_id": rid, "score": 7, "latency_ms": 812.5,
                                         "cost_usd": 0.002, "output_tokens": 40, "response": "x^3/3"})
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["request_id"] == rid and out["model"] == chosen and out["score"] == pytest.approx(0.7)
        assert out["latency_ms"] == 812.5 and out["response"] == "x^3/3" and out["id"] >= 1

        # the error codes
        assert c.post("/v1/feedback", json={"request_id": rid, "score": 5}).status_code == 409
        r = c.post("/v1/feedback", json={"request_id": "no-such-id", "score": 5})
        assert r.status_code == 404 and "no-such-id" in r.json()["detail"]
        for bad in ({"request_id": rid, "score": 11, "model": "big"}, {"request_id": rid, "score": -1},
                    {"request_id": rid, "score": True}, {"request_id": rid, "score": "7"},
                    {"request_id": rid, "score": 5, "model": "gpt-17"},
                    {"request_id": rid, "score": 5, "latency_ms": -1},
                    {"request_id": rid, "score": 5, "surprise": 1}, {"score": 5}):
            r = c.post("/v1/feedback", json=bad)
            assert r.status_code == 422, (bad, r.text)
        assert "outside score_range" in c.post("/v1/feedback", json={"request_id": rid, "score": 11}).text
        assert "gpt-17" in c.post("/v1/feedback", json={"request_id": rid, "score": 5, "model": "gpt-17"}).text
        r = c.post("/v1/feedback", content=b'{"request_id": "%s", "score": NaN}' % rid.encode(),
                   headers={"content-type": "application/json"})
        assert r.status_code == 422
        # another predicted model (named by alias) may get its own outcome
        other = "big" if chosen != "big" else "mid"
        r = c.post("/v1/feedback", json={"request_id": rid, "score": 2, "model": "big-alias" if other == "big" else other})
        assert r.status_code == 200 and r.json()["model"] == other

        # batch items are logged one by one; an item that cannot be routed is not logged
        r = c.post("/v1/route/batch", json={"requests": [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"},
                                                         {"prompt": "d", "preset": "no-such-preset"}]})
        ids = [x["request_id"] for x in r.json()["results"][:3]]
        assert len(set(ids)) == 3 and r.json()["results"][3]["index"] == 3
        text = c.get("/metrics").text
        assert metric(text, 'router_feedback_received_total{source="api",status="ok"}') == 2
        assert metric(text, 'router_feedback_received_total{source="api",status="duplicate"}') == 1
        assert metric(text, 'router_decisions_logged_total{status="ok"}') == 4
        health = c.get("/healthz").json()
        assert health["feedback"] is True and health["model_file"] == "router.onnx"

        spec = c.get("/openapi.json").json()
        op = spec["paths"]["/v1/feedback"]["post"]
        assert {"200", "404", "409", "422", "503"} <= set(op["responses"])
        assert spec["components"]["schemas"]["FeedbackRequest"]["additionalProperties"] is False

    with FeedbackStore.from_url(db_url(tmp_path)) as store:  # what the service wrote
        d = store.get_decision(rid)
        assert (d.model, d.propensity, d.exploration, d.router_version) == (chosen, 1.0, "greedy", version)
        assert d.prompt == "solve the integral of x^2" and set(d.predictions) == {"big", "mid", "small"}
        assert d.preferences == {"quality_weight": 1.0, "cost_weight": 1.0, "latency_weight": 0.0}
        assert d.input_tokens and d.input_tokens > 0
        assert {o.model: o.score for o in store.get_outcomes(rid)} == {chosen: pytest.approx(0.7),
                                                                       other: pytest.approx(0.2)}
        assert all(store.get_decision(i).prompt in {"a", "b", "c"} for i in ids)


def test_feedback_endpoint_fuzz_never_answers_5xx(predictor: Any, tmp_path: Path) -> None:
    """Schemathesis over POST /v1/feedback (valid and invalid bodies): no 5xx, every answer as
    documented."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis import checks as st_checks

    app = create_app(ServeSettings(device="cpu", feedback_url=db_url(tmp_path)), predictor)
    operation = schemathesis.openapi.from_asgi("/openapi.json", app)["/v1/feedback"]["POST"]
    checks = [st_checks.not_a_server_error, st_checks.status_code_conformance,
              st_checks.content_type_conformance, st_checks.response_schema_conformance]
    seen: list[int] = []
    rid = "fuzzed-request"  # one logged decision, so that some cases get past the lookup
    with FeedbackStore.from_url(db_url(tmp_path)) as store:
        est = {"quality": 0.5, "cost_usd": 0.001, "latency_ms": 100.0}
        store.log_decision(request_id=rid, prompt="fuzz me", model="mid", router_version="fuzz",
                           predictions={m: est for m in ("big", "mid", "small")})
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            if isinstance(case.body, dict) and "request_id" in case.body and len(seen) % 2 == 0:
                case.body["request_id"] = rid
            response = case.call()
            seen.append(response.status_code)
            assert response.status_code < 500, f"{case.body!r} -> {response.status_code}: {response.text[:300]}"
            case.validate_response(response, checks=checks)

        run()
    assert {200, 404, 422} <= set(seen), seen


def test_feedback_disabled_and_hash_retention(predictor: Any, tmp_path: Path) -> None:
    with onnx_client(predictor) as c:  # no feedback_url: routing works, feedback says how to enable it
        r = c.post("/v1/route", json={"prompt": "hello"})
        assert r.status_code == 200 and r.json()["propensity"] == 1.0
        r = c.post("/v1/feedback", json={"request_id": r.json()["request_id"], "score": 1})
        assert r.status_code == 503 and "feedback_url" in r.json()["detail"]
        assert c.get("/healthz").json()["feedback"] is False
    with onnx_client(predictor, tmp_path, retention="hash") as c:
        rid = c.post("/v1/route", json={"prompt": "my secret prompt"}).json()["request_id"]
        assert c.post("/v1/feedback", json={"request_id": rid, "score": 1, "response": "secret answer"}).status_code == 200
    with FeedbackStore.from_url(db_url(tmp_path)) as store:
        assert store.get_decision(rid).prompt is None and store.get_outcomes(rid)[0].response is None
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("feedback.db*"))
    assert b"my secret prompt" not in raw and b"secret answer" not in raw


def test_decision_log_keeps_what_the_policy_saw(predictor: Any, tmp_path: Path) -> None:
    """Image parts, requested output tokens and constraints are logged with the decision, so that
    off-policy estimates replay the policy with the same capability limits."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with onnx_client(predictor, tmp_path) as c:
        r = c.post("/v1/route", json={"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is in this picture?"}, image]}], "max_tokens": 64,
            "constraints": {"denied_models": ["small"], "max_latency_ms": 60000}})
        assert r.status_code == 200, r.text
        rid = r.json()["request_id"]
        plain = c.post("/v1/route", json={"prompt": "hello"}).json()["request_id"]
        free = c.post("/v1/route", json={"prompt": "hello", "constraints": {"max_cost_usd": 0}})
        assert free.status_code == 200, free.text
    with FeedbackStore.from_url(db_url(tmp_path)) as store:
        assert store.get_decision(rid).context == {
            "has_image": True, "max_output_tokens": 64,
            "constraints": {"denied_models": ["small"], "max_latency_ms": 60000.0}}
        assert store.get_decision(rid).model == "big"   # the only model that takes images
        assert store.get_decision(plain).context == {}
        assert store.get_decision(free.json()["request_id"]).context == {"constraints": {"max_cost_usd": 0.0}}


def test_epsilon_greedy_logs_propensities_below_one(predictor: Any, tmp_path: Path) -> None:
    eps, k = 0.5, 3
    with onnx_client(predictor, tmp_path, exploration={"kind": "epsilon_greedy", "epsilon": eps, "seed": 1}) as c:
        prompts = [{"prompt": f"question {i} about python loops"} for i in range(40)]
        results = c.post("/v1/route/batch", json={"requests": prompts}).json()["results"]
        constrained = c.post("/v1/route", json={"prompt": "q", "constraints": {"min_quality": 0.1}}).json()
        text = c.get("/metrics").text
        assert c.get("/healthz").json()["exploration"] == "epsilon_greedy(0.5)"
    greedy_p, other_p = (1 - eps) + eps / k, eps / k
    assert {round(r["propensity"], 9) for r in results} <= {round(greedy_p, 9), round(other_p, 9)}
    explored = [r for r in results if "explored" in r["reason"]]
    assert explored and all(r["propensity"] == pytest.approx(other_p) for r in explored)
    assert all(r["model"] not in r["fallbacks"] and len(r["fallbacks"]) == k - 1 for r in results)
    assert constrained["propensity"] == 1.0  # soft constraints switch exploration off
    assert metric(text, 'router_exploration_decisions_total{outcome="explored",policy="epsilon_greedy"}') \
        == len(explored)
    assert metric(text, 'router_exploration_decisions_total{outcome="constrained"') == 1
    with FeedbackStore.from_url(db_url(tmp_path)) as store:
        for r in results:
            d = store.get_decision(r["request_id"])
            assert d.propensity < 1 and d.propensity == pytest.approx(r["propensity"])
            assert d.model == r["model"] and d.exploration == "epsilon_greedy(0.5)"


def test_thompson_strength_comes_from_the_served_routers_evidence(predictor: Any, tiny_router_dir: Path,
                                                                  tmp_path: Path) -> None:
    counts = json.loads((tiny_router_dir / "training_metrics.json").read_text())["summary"]["observed_per_model"]
    expl = {"kind": "thompson", "thompson_evidence_half": 200, "seed": 0}
    app = create_app(ServeSettings(device="cpu", feedback_url=db_url(tmp_path), exploration=expl), predictor,
                     router_dir=tiny_router_dir)
    with TestClient(app) as c:
        assert c.get("/healthz").json()["exploration"] == "thompson(20,evidence/200)"
        r = c.post("/v1/route", json={"prompt": "which model?"}).json()
        assert 0 < r["propensity"] <= 1
    cfg = app.state.service.state.exploration
    assert cfg.evidence == counts and set(counts) == set(predictor.models)
    assert cfg.strength(list(counts)).tolist() == [max(2.0, 20 * n / (n + 200)) for n in counts.values()]
    with pytest.raises(ValueError, match="needs the router folder"):  # counts cannot be found
        create_app(ServeSettings(device="cpu", exploration=expl), predictor)


def test_acknowledged_decision_and_feedback_survive_kill_9(live_service: dict[str, Any]) -> None:
    base, proc = live_service["base"], live_service["proc"]
    r = httpx.post(f"{base}/v1/route", json={"prompt": "durable?"})
    assert r.status_code == 200
    rid, model, propensity = r.json()["request_id"], r.json()["model"], r.json()["propensity"]
    r = httpx.post(f"{base}/v1/feedback", json={"request_id": rid, "score": 0.25, "latency_ms": 120})
    assert r.status_code == 200
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    with FeedbackStore.from_url(live_service["url"]) as store:
        d = store.get_decision(rid)
        assert d.model == model and d.prompt == "durable?" and math.isclose(d.propensity, propensity)
        (o,) = store.get_outcomes(rid)
        assert (o.model, o.score, o.latency_ms) == (model, 0.25, 120.0)
