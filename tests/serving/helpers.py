"""Stand-ins and helpers shared by the serving tests: a deterministic stub predictor, app clients,
the fake LLM backend process, and a service process started as ``python -m neural_router serve``."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from neural_router.feedback.store import FeedbackStore
from neural_router.inference.interface import Predictions, RequestFeatures
from neural_router.pool import ModelPool, ModelSpec

from neural_router.serving.api.app import create_app
from neural_router.serving.config import ServeSettings

REPO = Path(__file__).resolve().parents[2]
FAKE_LLM = REPO / "tests" / "fake_llm_server.py"
ADMIN = {"Authorization": "Bearer adm1n"}
V2 = "v2-reloaded"

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


class RankedStub:
    """Minimal predictor over a given pool of three: big > mid > small in quality."""

    version = "stub"
    provider = "CPUExecutionProvider"
    max_length = 64

    def __init__(self, pool: Any) -> None:
        self.pool, self.models = pool, pool.names

    def predict(self, prompts: list[str], features: Any = None) -> Any:
        n = len(prompts)
        q = np.tile([0.9, 0.6, 0.3], (n, 1))
        out = np.full((n, 3), 50.0)
        tok = np.full(n, 5)
        return Predictions(self.models, q, self.pool.cost_usd(tok, out), self.pool.latency_ms(out), out, tok,
                           np.zeros(n, dtype=bool))


class SlowPredictor:
    """The real router, 0.15 s slower per batch: keeps requests queued while a reload happens."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.pool, self.models, self.version = inner.pool, inner.models, inner.version
        self.provider, self.max_length = inner.provider, inner.max_length

    def predict(self, prompts: list[str], features: list[RequestFeatures] | None = None) -> Predictions:
        time.sleep(0.15)
        return self.inner.predict(prompts, features)  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_fake_llm(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(FAKE_LLM), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("LISTENING "), f"fake LLM did not start: {line!r}"
    return proc, f"http://127.0.0.1:{int(line.split()[1])}"


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_ready(base: str, proc: subprocess.Popen[Any], log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"service exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"service not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


def fake_requests(fake: str) -> list[dict[str, Any]]:
    return httpx.get(f"{fake}/requests").json()  # type: ignore[no-any-return]


def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'feedback.db'}"


def metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def wait_for_outcome(store: FeedbackStore, rid: str, timeout_s: float = 10) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        outs = store.get_outcomes(rid)
        if outs:
            return outs
        time.sleep(0.05)
    pytest.fail(f"no graded outcome for {rid} after {timeout_s} s")


def onnx_client(predictor: Any, tmp_path: Path | None = None, **settings: Any) -> TestClient:
    """A client of an app serving ``predictor`` on CPU; with ``tmp_path``, decisions are logged
    to a SQLite file in it."""
    if tmp_path is not None:
        settings.setdefault("feedback_url", db_url(tmp_path))
    return TestClient(create_app(ServeSettings(device="cpu", **settings), predictor))


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
