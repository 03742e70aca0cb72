"""Learning from outcomes in the service: decision logging, /v1/feedback, exploration, scoring of
proxied answers, hot reload / rollback of the router, and durability across kill -9.

Everything runs on the real tiny ONNX router (``tiny_router_dir``) and real SQLite files; the
reload-under-load and kill -9 tests run the service as ``python -m neural_router serve`` in a subprocess."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient

from neural_router.feedback.store import FeedbackStore, UnknownRequestError
from neural_router.inference.interface import Predictions, RequestFeatures

from neural_router.serving.api.app import create_app
from neural_router.serving.engine.service import load_router
from neural_router.serving.config import ServeSettings
from tests.serving.test_e2e import REPO, _Stub, free_port, start_fake_llm, stop, wait_ready

ADMIN = {"Authorization": "Bearer adm1n"}
V2 = "v2-reloaded"


@pytest.fixture(scope="module")
def predictor(tiny_router_dir: Path) -> Any:
    return load_router(tiny_router_dir, "cpu", None, threads=1)


@pytest.fixture(scope="module")
def version(tiny_router_dir: Path) -> str:
    return str(json.loads((tiny_router_dir / "router_config.json").read_text())["version"])


@pytest.fixture(scope="module")
def second_router_dir(tiny_router_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same router under another version, predicting 10x the cost: a "retrained" router whose
    answers can be told apart from the first one's."""
    out = tmp_path_factory.mktemp("router2") / "onnx"
    shutil.copytree(tiny_router_dir, out)
    cfg = json.loads((out / "router_config.json").read_text())
    cfg["version"] = V2
    cfg["cost_scale"] = [10.0 * x for x in cfg["cost_scale"]]
    (out / "router_config.json").write_text(json.dumps(cfg))
    return out


def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'feedback.db'}"


def client(predictor: Any, tmp_path: Path | None = None, **settings: Any) -> TestClient:
    if tmp_path is not None:
        settings.setdefault("feedback_url", db_url(tmp_path))
    return TestClient(create_app(ServeSettings(device="cpu", **settings), predictor))


def metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


# ---- route -> feedback ---------------------------------------------------------------------------

def test_route_feedback_round_trip_and_error_codes(predictor: Any, version: str, tmp_path: Path) -> None:
    with client(predictor, tmp_path, score_range=(0, 10)) as c:
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
    with client(predictor) as c:  # no feedback_url: routing works, feedback says how to enable it
        r = c.post("/v1/route", json={"prompt": "hello"})
        assert r.status_code == 200 and r.json()["propensity"] == 1.0
        r = c.post("/v1/feedback", json={"request_id": r.json()["request_id"], "score": 1})
        assert r.status_code == 503 and "feedback_url" in r.json()["detail"]
        assert c.get("/healthz").json()["feedback"] is False
    with client(predictor, tmp_path, retention="hash") as c:
        rid = c.post("/v1/route", json={"prompt": "my secret prompt"}).json()["request_id"]
        assert c.post("/v1/feedback", json={"request_id": rid, "score": 1, "response": "secret answer"}).status_code == 200
    with FeedbackStore.from_url(db_url(tmp_path)) as store:
        assert store.get_decision(rid).prompt is None and store.get_outcomes(rid)[0].response is None
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("feedback.db*"))
    assert b"my secret prompt" not in raw and b"secret answer" not in raw


def test_epsilon_greedy_logs_propensities_below_one(predictor: Any, tmp_path: Path) -> None:
    eps, k = 0.5, 3
    with client(predictor, tmp_path, exploration={"kind": "epsilon_greedy", "epsilon": eps, "seed": 1}) as c:
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


def test_serve_refuses_a_bad_store_scorer_or_boost_model(tiny_router_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from neural_router.serving.api.app import serve

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


# ---- the proxy grades answers that come with a reference -------------------------------------------

def wait_for_outcome(store: FeedbackStore, rid: str, timeout_s: float = 10) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outs = store.get_outcomes(rid)
        if outs:
            return outs
        time.sleep(0.05)
    pytest.fail(f"no graded outcome for {rid} after {timeout_s} s")


def test_proxy_logs_decisions_and_grades_answers_with_a_reference(predictor: Any, tmp_path: Path) -> None:
    proc, url = start_fake_llm()
    try:
        endpoints = {m: {"endpoint": f"{url}/v1", "api_model": f"api-{m}"} for m in ("big", "mid", "small")}
        with client(predictor, tmp_path, endpoints=endpoints, scorer={"type": "numeric"}) as c, \
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
    that answered (feedback used to be stored under the chosen model, which never answered), the
    choice is kept in the decision's context, and feedback naming another model is refused."""
    from neural_router.pool import ModelPool

    pool = ModelPool.from_yaml(tiny_router_dir / "models.yaml")
    proc, url = start_fake_llm("--fail-models", "api-big", "--fail-status", "500")
    ask = [{"role": "user", "content": "What is 6 * 7? The answer is 42"}]
    try:
        endpoints = {m: {"endpoint": f"{url}/v1", "api_model": f"api-{m}"} for m in ("big", "mid", "small")}
        settings = ServeSettings(feedback_url=db_url(tmp_path), endpoints=endpoints, scorer={"type": "numeric"})
        with TestClient(create_app(settings, _Stub(pool))) as c, FeedbackStore.from_url(db_url(tmp_path)) as store:
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
        with TestClient(create_app(ServeSettings(feedback_url=db_url(tmp_path), endpoints=down), _Stub(pool))) as c:
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


# ---- admin: auth, reload, rollback -----------------------------------------------------------------

def test_admin_auth(predictor: Any, second_router_dir: Path) -> None:
    body = {"router_dir": str(second_router_dir)}
    with client(predictor) as c:  # no admin_key: the admin API is off
        r = c.post("/admin/reload", json=body, headers=ADMIN)
        assert r.status_code == 403 and "admin_key" in r.json()["detail"]
    with client(predictor, admin_key="adm1n", api_key="user-key") as c:
        assert c.post("/admin/reload", json=body).status_code == 401
        assert c.post("/admin/rollback").status_code == 401
        assert c.post("/admin/reload", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert c.post("/admin/reload", json=body,
                      headers={"Authorization": "Bearer user-key"}).status_code == 403  # api_key is not admin
        assert c.post("/v1/route", json={"prompt": "x"}, headers=ADMIN).status_code == 401  # nor the reverse
        assert c.post("/admin/reload", json={**body, "extra": 1}, headers=ADMIN).status_code == 422
        r = c.post("/admin/reload", json=body, headers=ADMIN)
        assert r.status_code == 200 and r.json()["router_version"] == V2
        spec = c.get("/openapi.json", headers={"Authorization": "Bearer user-key"}).json()
        assert {"401", "403", "422"} <= set(spec["paths"]["/admin/reload"]["post"]["responses"])


def test_reload_rollback_and_bad_folders(predictor: Any, version: str, second_router_dir: Path,
                                         tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(second_router_dir, corrupt)
    (corrupt / "router.onnx").write_bytes(b"not an onnx file")
    with client(predictor, admin_key="adm1n") as c:
        r = c.post("/admin/rollback", headers=ADMIN)
        assert r.status_code == 409 and "no previous router" in r.json()["detail"]
        for bad in (tmp_path / "missing", corrupt):
            r = c.post("/admin/reload", json={"router_dir": str(bad)}, headers=ADMIN)
            assert r.status_code == 422 and f"{version} keeps serving" in r.json()["detail"], r.text
            assert c.get("/healthz").json()["router_version"] == version
            assert c.post("/v1/route", json={"prompt": "still up?"}).json()["router_version"] == version

        r = c.post("/admin/reload", json={"router_dir": str(second_router_dir)}, headers=ADMIN)
        assert r.status_code == 200 and r.json() == {"router_version": V2, "previous_version": version,
                                                     "models": ["big", "mid", "small"]}
        health = c.get("/healthz").json()
        assert health["router_version"] == V2 and health["previous_router_version"] == version
        assert c.post("/v1/route", json={"prompt": "x"}).json()["router_version"] == V2
        assert c.get("/v1/models").json()["router_version"] == V2

        r = c.post("/admin/rollback", headers=ADMIN)
        assert r.status_code == 200 and r.json()["router_version"] == version
        assert c.post("/v1/route", json={"prompt": "x"}).json()["router_version"] == version
        assert c.post("/admin/rollback", headers=ADMIN).json()["router_version"] == V2  # and forward again
        text = c.get("/metrics").text
        assert metric(text, 'router_admin_actions_total{action="reload",status="error"}') == 2
        assert metric(text, 'router_admin_actions_total{action="rollback",status="ok"}') == 2


class SlowPredictor:
    """The real router, 0.15 s slower per batch: keeps requests queued while a reload happens."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pool, self.models, self.version = inner.pool, inner.models, inner.version
        self.provider, self.max_length = inner.provider, inner.max_length

    def predict(self, prompts: list[str], features: list[RequestFeatures] | None = None) -> Predictions:
        time.sleep(0.15)
        return self.inner.predict(prompts, features)  # type: ignore[no-any-return]


def test_requests_queued_before_a_reload_finish_on_the_old_router(predictor: Any, version: str,
                                                                  second_router_dir: Path) -> None:
    with client(SlowPredictor(predictor), admin_key="adm1n", max_batch_size=1) as c:
        results: list[tuple[str, float, float]] = []  # (version, predicted cost, v1's cost)

        def one(i: int) -> None:
            body = c.post("/v1/route", json={"prompt": f"queued {i}"}).json()
            v1_cost = predictor.predict([f"queued {i}"]).cost_usd[0, 0]
            results.append((body["router_version"], body["predictions"]["big"]["cost_usd"], v1_cost))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]  # ~1.8 s of queue
        for t in threads:
            t.start()
        time.sleep(0.2)
        r = c.post("/admin/reload", json={"router_dir": str(second_router_dir)}, headers=ADMIN)
        assert r.status_code == 200
        after = c.post("/v1/route", json={"prompt": "after"}).json()
        for t in threads:
            t.join(30)
        # every queued request was predicted by the router it started with, and says so
        assert len(results) == 12 and all(v == version and cost == pytest.approx(v1) for v, cost, v1 in results)
        assert after["router_version"] == V2
        v1_after = predictor.predict(["after"]).cost_usd[0, 0]
        assert after["predictions"]["big"]["cost_usd"] == pytest.approx(10 * v1_after)


# ---- a real service process: reload under load, kill -9 -------------------------------------------

def start_service(router_dir: Path, tmp: Path, config: dict[str, Any]) -> tuple[subprocess.Popen[Any], str]:
    (tmp / "serve.yaml").write_text(yaml.safe_dump({"inference_threads": 1, "access_log": False,
                                                    "log_level": "warning", **config}))
    port = free_port()
    log = tmp / "service.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "neural_router", "serve", "--router", str(router_dir), "--port",
                                 str(port), "--device", "cpu", "--config", str(tmp / "serve.yaml")],
                                cwd=REPO, env={**os.environ, "NEURAL_ROUTER_API_KEY": ""},
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, proc, log)
    return proc, base


@pytest.fixture
def live_service(tiny_router_dir: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    proc, base = start_service(tiny_router_dir, tmp_path, {
        "feedback_url": db_url(tmp_path), "admin_key": "adm1n", "max_batch_size": 16,
        "exploration": {"kind": "thompson", "seed": 0}})
    try:
        yield {"proc": proc, "base": base, "url": db_url(tmp_path)}
    finally:
        if proc.poll() is None:
            stop(proc)


def test_reload_under_load_drops_no_request(live_service: dict[str, Any], version: str,
                                            second_router_dir: Path) -> None:
    base = live_service["base"]
    done = threading.Event()
    results: list[tuple[float, int, str, str]] = []  # (start time, status, router_version, request_id)
    lock = threading.Lock()

    def worker(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as h:
            n, after = 0, 0
            while after < 2:  # until two requests after the reload answered
                after += done.is_set()
                t = time.monotonic()
                try:
                    r = h.post("/v1/route", json={"prompt": f"worker {i} question {n}"})
                    row = (t, r.status_code, r.json().get("router_version", ""), r.json().get("request_id", ""))
                except httpx.HTTPError as e:
                    row = (t, -1, type(e).__name__, "")
                with lock:
                    results.append(row)
                n += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    r = httpx.post(f"{base}/admin/reload", json={"router_dir": str(second_router_dir)}, headers=ADMIN, timeout=60)
    swapped_at = time.monotonic()
    done.set()
    for t in threads:
        t.join(60)
    assert r.status_code == 200, r.text
    failed = [x for x in results if x[1] != 200]
    assert not failed, failed[:5]
    assert len(results) >= 150 and sum(x[2] == V2 for x in results) >= 100
    versions = {x[2] for x in results}
    assert versions == {version, V2}  # served by both, never anything else
    assert all(x[2] == V2 for x in results if x[0] > swapped_at)
    assert httpx.get(f"{base}/healthz").json()["router_version"] == V2
    with FeedbackStore.from_url(live_service["url"]) as store:  # each decision logged by its own router
        for _, _, v, rid in results[::10]:
            d = store.get_decision(rid)
            assert d.router_version == v and 0 < d.propensity <= 1 and d.exploration == "thompson(20)"
    r = httpx.post(f"{base}/admin/rollback", headers=ADMIN)
    assert r.status_code == 200 and httpx.get(f"{base}/healthz").json()["router_version"] == version


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


def test_decision_log_keeps_what_the_policy_saw(predictor: Any, tmp_path: Path) -> None:
    """Image parts, requested output tokens and constraints are logged with the decision, so that
    off-policy estimates replay the policy with the same capability limits."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    with client(predictor, tmp_path) as c:
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
