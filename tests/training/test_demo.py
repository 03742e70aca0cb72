"""neural_router.training.demo: the whole pipeline (train, evaluate with baselines, export) end to end."""

import json

import pytest

from tests.conftest import tiny_encoder_config


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, tiny_data_file, tiny_pool_file, tiny_train_config):
    from neural_router.training.demo import run_demo

    return run_demo([str(tiny_data_file)], tmp_path_factory.mktemp("demo") / "demo", tiny_train_config,
                    tiny_pool_file, encoder_config=tiny_encoder_config(),
                    samples=["math question: solve the integral"])


def test_demo_evaluates_the_router_against_every_baseline(demo_dir):
    rep = json.loads((demo_dir / "router" / "eval_report.json").read_text())
    assert {"neural-router", "knn", "mlp", "benchmark-prior"} <= set(rep["routers"])
    assert (demo_dir / "router" / "cost_quality.png").is_file()


def test_demo_exports_fp32_and_int8(demo_dir):
    assert (demo_dir / "onnx" / "router.onnx").is_file() and (demo_dir / "onnx" / "router.int8.onnx").is_file()


def test_demo_model_card_reports_aiq(demo_dir):
    assert "AIQ" in (demo_dir / "router" / "README.md").read_text()
