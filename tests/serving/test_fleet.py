"""Replicas converge on the router the registry names (serving/engine/fleet.py).

In-process tests drive one app (TestClient) against a SQLite registry; the fleet test runs real
`neural-router serve` processes against a throwaway PostgreSQL server, with traffic during every
swap."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from neural_router.feedback.registry import RouterRegistry
from neural_router.feedback.store import StoreUnavailableError
from neural_router.serving.api.app import create_app
from neural_router.serving.config import ServeSettings
from neural_router.serving.engine.service import load_router
from tests.feedback.test_store import _fresh_pg_database, pg_server  # noqa: F401 - the fixture
from tests.serving.helpers import free_port, stop, wait_ready

REPO = Path(__file__).resolve().parents[2]
ADMIN_KEY = "fleet-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def copy_as_version(src: Path, dst: Path, version: str) -> Path:
    """A copy of the router folder ``src`` whose router_config.json says ``version``."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "router_config.json").read_text())
    config["version"] = version
    (dst / "router_config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(scope="module")
def routers(tiny_router_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """v1 (the tiny router), v2 (a copy with another version), broken (a folder that cannot load)."""
    tmp = tmp_path_factory.mktemp("fleet-routers")
    v1 = json.loads((tiny_router_dir / "router_config.json").read_text())["version"]
    v2_dir = copy_as_version(tiny_router_dir, tmp / "v2", "fleet-v2")
    broken = tmp / "broken"
    broken.mkdir()
    (broken / "router_config.json").write_text(json.dumps({"version": "broken-v3"}))
    return {"v1": v1, "v1_dir": tiny_router_dir, "v2": "fleet-v2", "v2_dir": v2_dir, "broken": broken}


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Poll ``probe`` every 50 ms until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    pytest.fail(f"{what} did not happen within {timeout_s} s (last: {last!r})")


# ---- one replica, in process -------------------------------------------------------------------

@pytest.fixture
def app_client(routers: dict[str, Any], tmp_path: Path) -> Iterator[tuple[TestClient, str]]:
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    settings = ServeSettings(feedback_url=url, registry_poll_s=0.1, admin_key=ADMIN_KEY,
                             replica_id="replica-a", inference_threads=1, max_prompt_tokens=32)
    app = create_app(settings, load_router(routers["v1_dir"], "cpu", 32, 1), router_dir=routers["v1_dir"])
    with TestClient(app) as client:
        yield client, url


def fleet(client: TestClient) -> dict[str, Any]:
    return client.get("/healthz").json()["fleet"]  # type: ignore[no-any-return]


def test_a_replica_follows_the_registry_and_reports_it(app_client, routers) -> None:
    client, url = app_client
    first = wait_for("first registry read", lambda: fleet(client)["last_check"] and fleet(client))
    assert first["in_sync"] is True and first["registry_version"] is None   # empty: serves its own
    assert first["replica"] == "replica-a" and first["serving_version"] == routers["v1"]
    with RouterRegistry.from_url(url) as reg:
        entry = reg.record(routers["v2"], routers["v2_dir"], "promote", "test")
    wait_for("the swap to v2", lambda: client.get("/healthz").json()["router_version"] == routers["v2"])
    health = client.get("/healthz").json()
    assert health["previous_router_version"] == routers["v1"]
    f = health["fleet"]
    assert (f["registry_version"], f["registry_entry"], f["in_sync"], f["last_error"]) == \
        (routers["v2"], entry.id, True, None)
    assert f["last_swap"] is not None
    assert client.post("/v1/route", json={"prompt": "solve x"}).json()["router_version"] == routers["v2"]
    metrics = client.get("/metrics").text
    assert f'router_info{{replica="replica-a",version="{routers["v2"]}"}} 1.0' in metrics
    assert "router_fleet_in_sync 1.0" in metrics
    assert 'router_fleet_checks_total{outcome="swapped"} 1.0' in metrics


def test_a_folder_that_cannot_load_keeps_the_old_router(app_client, routers) -> None:
    client, url = app_client
    with RouterRegistry.from_url(url) as reg:
        reg.record("broken-v3", routers["broken"], "promote", "test")
        f = wait_for("the load error", lambda: (x := fleet(client))["last_error"] and x)
        assert f["in_sync"] is False and f["registry_version"] == "broken-v3"
        assert f["serving_version"] == routers["v1"] and "keeps serving" in f["last_error"]
        assert str(routers["broken"]) in f["last_error"]
        assert client.post("/v1/route", json={"prompt": "hi"}).status_code == 200
        metrics = client.get("/metrics").text
        assert "router_fleet_in_sync 0.0" in metrics and 'outcome="load_error"' in metrics
        # a folder holding another version than the entry says is not served either
        reg.record("not-what-it-holds", routers["v2_dir"], "promote", "test")
        wait_for("the version mismatch", lambda: "holds router fleet-v2" in (fleet(client)["last_error"] or ""))
        assert client.get("/healthz").json()["router_version"] == routers["v1"]
        reg.record(routers["v2"], routers["v2_dir"], "promote", "test")   # a good entry is served at once
        wait_for("the swap to v2", lambda: (x := fleet(client))["in_sync"] and x["serving_version"] == routers["v2"])
        assert fleet(client)["last_error"] is None


def test_admin_reload_and_rollback_go_through_the_registry(app_client, routers) -> None:
    client, url = app_client
    r = client.post("/admin/reload", json={"router_dir": str(routers["v2_dir"])}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["router_version"] == routers["v2"]
    with RouterRegistry.from_url(url) as reg:
        history = reg.history(5)
        # the registry was empty: the router served before is recorded first, so rollback has a target
        assert [(e.version, e.action) for e in history] == [(routers["v2"], "reload"), (routers["v1"], "reload")]
        assert history[0].promoted_by == "admin@replica-a" and history[0].evidence == {"replica": "replica-a"}
        r = client.post("/admin/rollback", headers=ADMIN)
        assert r.status_code == 200 and r.json()["router_version"] == routers["v1"]
        assert reg.current().version == routers["v1"] and reg.current().action == "rollback"
        reg.record("broken-v3", routers["broken"], "promote", "test")
        wait_for("the load error", lambda: fleet(client)["last_error"])
        r = client.post("/admin/rollback", headers=ADMIN)   # back to v1, which never stopped serving
        assert r.status_code == 200 and r.json()["previous_version"] == routers["v2"]
        assert reg.current().version == routers["v1"]
        reg.record("broken-v3", routers["broken"], "promote", "test")
        last = reg.record(routers["v2"], routers["broken"], "promote", "test")   # v2 from a broken folder
        r = client.post("/admin/rollback", headers=ADMIN)   # to broken-v3, which cannot be served
        assert r.status_code == 422 and str(routers["broken"]) in r.json()["detail"]
        assert reg.current() == last                         # a refused rollback records nothing
    assert client.get("/healthz").json()["router_version"] == routers["v1"]


def test_a_new_replica_starts_on_the_registrys_router(routers, tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    with RouterRegistry.from_url(url) as reg:
        reg.record(routers["v2"], routers["v2_dir"], "promote", "test")
    settings = ServeSettings(feedback_url=url, registry_poll_s=60, inference_threads=1)
    app = create_app(settings, load_router(routers["v1_dir"], "cpu", None, 1), router_dir=routers["v1_dir"])
    with TestClient(app) as client:   # no waiting: the first request already sees the registry's router
        assert client.post("/v1/route", json={"prompt": "hi"}).json()["router_version"] == routers["v2"]
        assert fleet(client)["in_sync"] is True


def test_a_registry_that_cannot_be_written_changes_nothing(app_client, routers, monkeypatch) -> None:
    client, _ = app_client

    def down(*args: Any, **kw: Any) -> None:
        raise StoreUnavailableError("connection refused")

    monkeypatch.setattr(client.app.state.fleet.registry, "record", down)
    r = client.post("/admin/reload", json={"router_dir": str(routers["v2_dir"])}, headers=ADMIN)
    assert r.status_code == 503 and "connection refused" in r.json()["detail"]
    assert client.get("/healthz").json()["router_version"] == routers["v1"]   # not swapped alone
    assert client.post("/admin/rollback", headers=ADMIN).status_code == 409   # nothing to roll back to
    monkeypatch.setattr(client.app.state.fleet.registry, "current", down)      # cannot be read either
    f = wait_for("the registry error", lambda: (x := fleet(client))["last_error"] and x)
    assert f["last_error"] == "cannot read the router registry: connection refused"
    assert f["serving_version"] == routers["v1"]
    assert client.post("/v1/route", json={"prompt": "hi"}).status_code == 200
    assert 'router_fleet_checks_total{outcome="registry_error"}' in client.get("/metrics").text


def test_without_a_registry_the_replica_is_alone(routers) -> None:
    settings = ServeSettings(registry_poll_s=0.1, admin_key=ADMIN_KEY, inference_threads=1)
    app = create_app(settings, load_router(routers["v1_dir"], "cpu", None, 1), router_dir=routers["v1_dir"])
    with TestClient(app) as client:
        assert client.get("/healthz").json()["fleet"] is None
        assert client.post("/admin/rollback", headers=ADMIN).status_code == 409
        assert "router_info{" in client.get("/metrics").text


# ---- a fleet of real service processes on PostgreSQL -------------------------------------------

def start_replica(router_dir: Path, url: str, name: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`neural-router serve` on a free loopback port, following the registry of ``url``."""
    port = free_port()
    env = {**os.environ, "NEURAL_ROUTER_FEEDBACK_URL": url, "NEURAL_ROUTER_REGISTRY_POLL_S": "0.5",
           "NEURAL_ROUTER_ADMIN_KEY": ADMIN_KEY, "NEURAL_ROUTER_REPLICA_ID": name, "NEURAL_ROUTER_DEVICE": "cpu",
           "NEURAL_ROUTER_INFERENCE_THREADS": "1", "NEURAL_ROUTER_MAX_PROMPT_TOKENS": "32",
           "NEURAL_ROUTER_ACCESS_LOG": "false"}
    cli = Path(sys.executable).parent / "neural-router"
    with log.open("w") as out:
        proc = subprocess.Popen([str(cli), "serve", "--router", str(router_dir), "--port", str(port)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


class Traffic(threading.Thread):
    """Routes prompts round-robin through the replicas until stopped (at most ``limit`` requests);
    counts answers per router version and keeps every failure."""

    def __init__(self, bases: list[str], limit: int = 20_000) -> None:
        super().__init__(daemon=True)
        self.bases, self.limit = bases, limit
        self.halt = threading.Event()
        self.versions: dict[str, int] = {}
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(self.limit):
                if self.halt.is_set():
                    return
                base = self.bases[i % len(self.bases)]
                try:
                    r = client.post(f"{base}/v1/route", json={"prompt": f"math question {i}: solve x"})
                except httpx.HTTPError as e:
                    self.failures.append(f"{base}: {type(e).__name__}: {e}")
                    continue
                if r.status_code != 200:
                    self.failures.append(f"{base}: {r.status_code} {r.text[:200]}")
                else:
                    v = r.json()["router_version"]
                    self.versions[v] = self.versions.get(v, 0) + 1

    def finish(self) -> None:
        self.halt.set()
        if self.ident is not None:   # started
            self.join(30)


def versions(bases: list[str]) -> list[str]:
    return [httpx.get(f"{b}/healthz", timeout=30).json()["router_version"] for b in bases]


def test_a_fleet_converges_on_promotions_and_rollbacks(pg_server, routers, tmp_path) -> None:  # noqa: F811
    url = _fresh_pg_database(pg_server)
    replicas = [start_replica(routers["v1_dir"], url, f"replica-{i}", tmp_path / f"replica-{i}.log")
                for i in range(2)]
    bases = [base for _, base in replicas]
    traffic = Traffic(bases)
    try:
        t0 = time.monotonic()
        for i, (proc, base) in enumerate(replicas):
            wait_ready(base, proc, tmp_path / f"replica-{i}.log")
        started_in = time.monotonic() - t0
        traffic.start()
        # feedback on a decision one replica logged, sent to another: they share the store
        routed = httpx.post(f"{bases[0]}/v1/route", json={"prompt": "integral of x"}, timeout=30).json()
        r = httpx.post(f"{bases[1]}/v1/feedback", json={"request_id": routed["request_id"], "score": 1.0},
                       timeout=30)
        assert r.status_code == 200 and r.json()["model"] == routed["model"]

        start = time.monotonic()
        cli = Path(sys.executable).parent / "neural-router"
        done = subprocess.run([str(cli), "promote", "--router", str(routers["v2_dir"]), "--store", url,
                               "--by", "fleet-test"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["version"] == routers["v2"]
        wait_for("every replica on v2", lambda: versions(bases) == [routers["v2"]] * 2, 60)
        promoted_in = time.monotonic() - start

        r = httpx.post(f"{bases[1]}/admin/rollback", headers=ADMIN, timeout=60)   # one replica's rollback...
        assert r.status_code == 200 and r.json()["router_version"] == routers["v1"]
        wait_for("every replica back on v1", lambda: versions(bases) == [routers["v1"]] * 2, 60)  # ...reaches all
        rolled_back_in = time.monotonic() - start - promoted_in
        time.sleep(0.3)   # traffic on the rolled-back fleet too
    finally:
        traffic.finish()
        for proc, _ in replicas:
            stop(proc)
    assert traffic.failures == [], traffic.failures[:5]
    assert set(traffic.versions) == {routers["v1"], routers["v2"]} and sum(traffic.versions.values()) > 20
    print(f"fleet: {sum(traffic.versions.values())} requests, promotion reached every replica in "
          f"{promoted_in:.1f} s, rollback in {rolled_back_in:.1f} s, started in {started_in:.1f} s")
    with RouterRegistry.from_url(url) as reg:
        assert [(e.version, e.action, e.promoted_by) for e in reg.history(5)] == [
            (routers["v1"], "rollback", "admin@replica-1"), (routers["v2"], "promote", "fleet-test")]
