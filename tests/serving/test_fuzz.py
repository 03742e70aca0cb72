"""Fuzz the OpenAPI schema of the router API with schemathesis (bounded): no input gives a 5xx, and
every response matches the documented status codes and schemas.

The app serves the real tiny ONNX router, so fuzzed text goes through the real tokenizer.
/v1/chat/completions is left out here (it needs a backend; test_serving_e2e.py covers it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import schemathesis  # noqa: E402  (dev extra)
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis import checks as st_checks  # noqa: E402

from neural_router.serving.api.app import create_app  # noqa: E402
from neural_router.serving.engine.service import load_router  # noqa: E402
from neural_router.serving.config import ServeSettings  # noqa: E402


@pytest.fixture(scope="module")
def api_schema(tiny_router_dir: Path) -> Any:
    predictor = load_router(tiny_router_dir, "cpu", None)
    app = create_app(ServeSettings(device="cpu", max_wait_ms=0, max_body_bytes=65_536,
                                   max_prompt_chars=5_000, max_batch_requests=16), predictor)
    return schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/v1/chat/completions")


OPERATIONS = [("POST", "/v1/route"), ("POST", "/v1/route/batch"), ("POST", "/v1/predict"),
              ("GET", "/v1/models"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]
CHECKS = [st_checks.not_a_server_error, st_checks.status_code_conformance,
          st_checks.content_type_conformance, st_checks.response_schema_conformance]


CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + \
        [(m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if m == "POST"]  # GETs take no input


@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_api_never_answers_5xx(api_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    calls = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=12 if method == "POST" else 2, deadline=None, derandomize=True,
              database=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        response = case.call()
        calls.append(response.status_code)
        assert response.status_code < 500, \
            f"{case.method} {case.path} {case.body!r} -> {response.status_code}: {response.text[:300]}"
        case.validate_response(response, checks=CHECKS)

    run()
    assert calls, "schemathesis generated no request"
