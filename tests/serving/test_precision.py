"""The service's precision setting (``int8: true`` still accepted) and what /healthz says runs."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from fastapi.testclient import TestClient

from neural_router.configs import config_path
from neural_router.inference.predictors import EXPORT_REPORT
from neural_router.serving.api.app import create_app
from neural_router.serving.config import ConfigError, ServeSettings, load_settings
from neural_router.serving.engine.service import load_router


def test_precision_setting_and_its_int8_alias(tmp_path, monkeypatch):
    assert load_settings(config_path("serve.yaml")).precision == "auto"
    assert ServeSettings().precision == "auto"
    assert ServeSettings(int8=True).precision == "int8"
    assert ServeSettings(int8=False, precision="fp32").precision == "fp32"
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"int8": True}))
    assert load_settings(old).precision == "int8"
    monkeypatch.setenv("NEURAL_ROUTER_PRECISION", "fp16")
    assert load_settings().precision == "fp16"
    monkeypatch.delenv("NEURAL_ROUTER_PRECISION")
    with pytest.raises(ConfigError, match="int8: true means precision: int8; it contradicts precision: fp16"):
        load_settings(old, precision="fp16")
    with pytest.raises(ConfigError, match="precision"):
        load_settings(precision="fp8")


def test_healthz_names_the_model_file_and_precision(tiny_router_dir, tmp_path):
    int8_default = tmp_path / "onnx"
    shutil.copytree(tiny_router_dir, int8_default)
    report = json.loads((int8_default / EXPORT_REPORT).read_text())
    report["default_precision"] = {"cpu": "int8", "cuda": "fp32"}
    (int8_default / EXPORT_REPORT).write_text(json.dumps(report))
    for folder, precision, expect in ((tiny_router_dir, "auto", ("router.onnx", "fp32")),
                                      (int8_default, "auto", ("router.int8.onnx", "int8")),
                                      (int8_default, "fp32", ("router.onnx", "fp32"))):
        settings = ServeSettings(device="cpu", precision=precision)
        predictor = load_router(folder, settings.device, settings.max_prompt_tokens, settings.inference_threads,
                                settings.precision)
        with TestClient(create_app(settings, predictor)) as c:
            h = c.get("/healthz").json()
        assert (h["model_file"], h["precision"]) == expect
        assert h["status"] == "ok" and h["provider"] == "CPUExecutionProvider" and h["device"] == "cpu"
