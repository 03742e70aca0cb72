"""The admin API: its own key, reload and rollback, and that no request is dropped or mixed
across a reload (in process, and against a service process under load)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from neural_router.feedback.store import FeedbackStore

from tests.serving.helpers import ADMIN, V2, SlowPredictor, metric, onnx_client


def test_admin_auth(predictor: Any, second_router_dir: Path) -> None:
    body = {"router_dir": str(second_router_dir)}
    with onnx_client(predictor) as c:  # no admin_key: the admin API is off
        r = c.post("/admin/reload", json=body, headers=ADMIN)
        assert r.status_code == 403 and "admin_key" in r.json()["detail"]
    with onnx_client(predictor, admin_key="adm1n", api_key="user-key") as c:
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
    with onnx_client(predictor, admin_key="adm1n") as c:
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


def test_requests_queued_before_a_reload_finish_on_the_old_router(predictor: Any, version: str,
                                                                  second_router_dir: Path) -> None:
    with onnx_client(SlowPredictor(predictor), admin_key="adm1n", max_batch_size=1) as c:
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
