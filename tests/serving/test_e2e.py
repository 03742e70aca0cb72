"""End-to-end tests over real HTTP on 127.0.0.1: the service runs as `python -m neural_router serve` on the tiny
ONNX router in a subprocess, and the proxy forwards to a real fake-LLM server process
(tests/fake_llm_server.py) that fails, hangs or answers depending on the model name."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from neural_router.serving.api.app import serve
from tests.serving.helpers import REPO, fake_requests, free_port, start_fake_llm, stop, wait_ready

API_KEY = "test-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[str]:
    """api-small answers 503, api-mid hangs past the backend timeout, api-big answers."""
    proc, url = start_fake_llm("--fail-models", "api-small", "--hang-models", "api-mid", "--hang-s", "5")
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def service(tiny_router_dir: Path, fake_llm: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("serve")
    config: dict[str, Any] = {
        "max_batch_size": 16, "max_wait_ms": 20, "backend_timeout_s": 1.0, "api_key": API_KEY,
        "max_prompt_tokens": 32, "inference_threads": 1,
        "presets": {"balanced": {"quality_weight": 1, "cost_weight": 0.3},
                    "cheapest": {"quality_weight": 0.001, "cost_weight": 1}},
        "endpoints": {name: {"endpoint": f"{fake_llm}/v1", "api_model": f"api-{name}"}
                      for name in ("big", "mid", "small")},
    }
    config["endpoints"]["big"]["api_key_env"] = "FAKE_BIG_KEY"
    (tmp / "serve.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp / "service.log"
    env = {**os.environ, "FAKE_BIG_KEY": "k-big", "NEURAL_ROUTER_LOG_LEVEL": "info"}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "neural_router", "serve", "--router", str(tiny_router_dir),
                                 "--port", str(port), "--config", str(tmp / "serve.yaml")],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log)
        yield {"base": base, "log": log, "fake": fake_llm}
    finally:
        stop(proc)


# ---- routing over HTTP ------------------------------------------------------------------------------

def test_route_end_to_end(service: dict[str, Any], tiny_router_dir: Path) -> None:
    base = service["base"]
    health = httpx.get(f"{base}/healthz").json()  # exempt from the API key
    version = json.loads((tiny_router_dir / "router_config.json").read_text())["version"]
    assert health["router_version"] == version and health["provider"] == "CPUExecutionProvider"
    assert health["device"] == "cpu" and health["device_fallback"] is True
    assert health["max_length"] == 32  # max_prompt_tokens, below the router's own 64
    assert httpx.post(f"{base}/v1/route", json={"prompt": "hi"}).status_code == 401

    r = httpx.post(f"{base}/v1/route", json={"prompt": "solve the integral of x^2"}, headers=AUTH)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] in {"big", "mid", "small"} and body["router_version"] == version
    assert set(body["predictions"]) == {"big", "mid", "small"} and body["truncated"] is False
    longish = " ".join(["python function loop"] * 15)  # ~45 router tokens: > 32, < 64
    r = httpx.post(f"{base}/v1/predict", json={"prompts": [longish, "short"]}, headers=AUTH).json()
    assert r["truncated"] == [True, False] and 32 < r["input_tokens"][0] < 64
    assert httpx.post(f"{base}/v1/route", json={"prompt": longish}, headers=AUTH).json()["truncated"] is True
    image = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "describe"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}
    r = httpx.post(f"{base}/v1/route", json=image, headers=AUTH)
    assert r.status_code == 200 and r.json()["model"] == "big"  # the only model taking images
    r = httpx.post(f"{base}/v1/route", content=b'{"prompt": ', headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422
    # CPU fallback is logged exactly once
    assert service["log"].read_text().count("CUDA is not available") == 1


def test_concurrent_requests_are_batched(service: dict[str, Any]) -> None:
    base = service["base"]

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=30) as c:
            rs = await asyncio.gather(*(c.post("/v1/route", json={"prompt": f"question {i}"}) for i in range(32)))
            return [r.status_code for r in rs]

    assert asyncio.run(burst()) == [200] * 32
    metrics = httpx.get(f"{base}/metrics", headers=AUTH).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in metrics.splitlines()
              if line.startswith("router_batch_size_")}
    mean_batch = values["router_batch_size_sum"] / values["router_batch_size_count"]
    assert mean_batch > 1.5, values


# ---- the OpenAI-compatible proxy -------------------------------------------------------------------

def test_proxy_falls_back_past_failing_and_hanging_backends(service: dict[str, Any]) -> None:
    base, fake = service["base"], service["fake"]
    before = len(fake_requests(fake))
    req = {"model": "router:cheapest", "messages": [{"role": "user", "content": "hello there"}],
           "temperature": 0.2}
    t0 = time.monotonic()
    r = httpx.post(f"{base}/v1/chat/completions", json=req, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["x-router-model"] == "big" and r.headers["x-router-attempts"] == "3"
    body = r.json()
    assert body["model"] == "big" and body["choices"][0]["message"]["content"] == "echo[api-big]: hello there"
    assert 1.0 <= time.monotonic() - t0 < 5  # waited for the hanging backend's timeout, not its 5 s
    seen = fake_requests(fake)[before:]
    assert [s["model"] for s in seen] == ["api-small", "api-mid", "api-big"]  # cheapest first
    assert seen[2]["authorization"] == "Bearer k-big" and seen[0]["authorization"] is None
    assert seen[2]["body"]["temperature"] == 0.2  # unknown OpenAI fields are forwarded
    metrics = httpx.get(f"{base}/metrics", headers=AUTH).text
    assert 'router_proxy_attempts_total{model="small",outcome="http_503"} 1.0' in metrics
    assert 'router_proxy_attempts_total{model="mid",outcome="timeout"} 1.0' in metrics


def test_proxy_streams_sse(service: dict[str, Any]) -> None:
    base = service["base"]
    req = {"model": "big", "stream": True, "messages": [{"role": "user", "content": "stream me"}]}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=req, headers=AUTH, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream") and r.headers["x-router-model"] == "big"
        data = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]" and len(data) == 4
    chunks = [json.loads(d) for d in data[:-1]]
    assert {c["model"] for c in chunks} == {"big"}
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "echo[api-big]: stream me"


def test_proxy_stream_falls_back_before_first_byte(service: dict[str, Any]) -> None:
    req = {"model": "router:cheapest", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(f"{service['base']}/v1/chat/completions", json=req, headers=AUTH, timeout=30)
    assert r.status_code == 200 and r.headers["x-router-model"] == "big"
    assert r.text.rstrip().endswith("data: [DONE]") and '"model":"big"' in r.text


def test_proxy_errors(service: dict[str, Any]) -> None:
    base = service["base"]
    msgs = [{"role": "user", "content": "x"}]
    r = httpx.post(f"{base}/v1/chat/completions", json={"model": "small", "messages": msgs}, headers=AUTH)
    assert r.status_code == 502 and r.json()["error"]["code"] == "all_backends_failed"
    assert "small: HTTP 503" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/v1/chat/completions", json={"model": "gpt-17", "messages": msgs}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(f"{base}/v1/chat/completions", json={"model": "router:nope", "messages": msgs}, headers=AUTH)
    assert r.status_code == 400 and "cheapest" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/v1/chat/completions", json={"model": "router", "messages": []}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_request_error"


# ---- start-up failures -------------------------------------------------------------------------------

def test_serve_exits_with_a_clear_message_on_bad_router_folders(tiny_router_dir: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_router_dir, corrupt)
    (corrupt / "router.onnx").write_bytes(b"not an onnx file")
    p = subprocess.run([sys.executable, "-m", "neural_router", "serve", "--router", str(corrupt), "--port", str(free_port())],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert "cannot load the router folder" in p.stderr and "router.onnx" in p.stderr
    assert "Traceback" not in p.stderr
    # the same function in-process: missing folder, invalid config
    bad_config = tmp_path / "serve.yaml"
    bad_config.write_text("max_batch_size: 0\n")
    for kwargs, message in (({"router_dir": tmp_path / "missing"}, "does not exist"),
                            ({"router_dir": tiny_router_dir, "config_file": bad_config}, "max_batch_size")):
        with pytest.raises(SystemExit) as exit_info:
            serve(**kwargs)  # type: ignore[arg-type]
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


# ---- tooling: the benchmark and the Dockerfile -------------------------------------------------------

def test_bench_serving_smoke(tiny_router_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_serving.py"), "--router", str(tiny_router_dir),
                        "--out", str(out), "--concurrency", "1,4", "--duration-s", "0.5", "--skip-unbatched",
                        "--device", "cpu", "--threads", "1", "--ratio-rounds", "2", "--ratio-concurrency", "4"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    result = json.loads(out.read_text())
    runs = result["services"][0]["runs"]
    assert [r["concurrency"] for r in runs] == [1, 4] and all(r["ok"] > 0 and r["errors"] == 0 for r in runs)
    assert runs[0]["p50_ms"] > 0 and runs[1]["mean_batch_size"] >= 1
    assert all(r["service_cpu_ms_per_request"] > 0 and r["client_cpu_ms_per_request"] > 0
               and 0 < r["cores_busy"] < 1.5 for r in runs)   # the CPU accounting of each run
    assert result["raw_onnx"]["cpu_ms_per_prompt"]["32"] > 0
    assert set(result["raw_onnx"]["by_batch_size"]) == {"1", "32"} and "req/s" in p.stdout
    ratio = result["ratio"]   # service/raw, interleaved rounds
    assert len(ratio["rounds"]) == 2 and all(r["ratio"] > 0 and r["errors"] == 0 for r in ratio["rounds"])
    assert ratio["median"]["ratio"] == pytest.approx(sum(r["ratio"] for r in ratio["rounds"]) / 2)
    assert 0 < ratio["median"]["event_loop_cpu_ms_per_request"] < ratio["median"]["service_cpu_ms_per_request"]


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint not installed: the dev extra installs it (pip install -e .[dev])")
    p = subprocess.run([hadolint, str(REPO / "Dockerfile.gpu")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
