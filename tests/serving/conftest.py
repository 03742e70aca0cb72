"""Fixtures of the serving tests (helpers: tests/serving/helpers.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from neural_router.serving.engine.service import load_router
from tests.serving.helpers import V2, db_url, make_client, start_service, stop


@pytest.fixture
def client() -> Iterator[TestClient]:
    """An app serving the deterministic stub predictor with the default settings."""
    with make_client() as c:
        yield c


@pytest.fixture(scope="session")
def predictor(tiny_router_dir: Path) -> Any:
    return load_router(tiny_router_dir, "cpu", None, threads=1)


@pytest.fixture(scope="session")
def version(tiny_router_dir: Path) -> str:
    return str(json.loads((tiny_router_dir / "router_config.json").read_text())["version"])


@pytest.fixture(scope="session")
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
