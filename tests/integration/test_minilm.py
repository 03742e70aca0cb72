"""A few integration tests on the real MiniLM encoder and the real shared data (small slices)."""

import csv
import json

import numpy as np
import pytest

from neural_router import Router
from neural_router.inference.predictors import OnnxPredictor, TorchPredictor

from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def real_slice(tmp_path_factory):
    """First 60 rows of each RouterBench file and 40 of two RouterDC files: both pools, real text."""
    out = tmp_path_factory.mktemp("real")
    csv.field_size_limit(1 << 30)
    for f in sorted((SHARED_DATA / "routerbench").glob("*.csv")):
        with open(f, newline="") as src, open(out / f.name, "w", newline="") as dst:
            r, w = csv.reader(src), csv.writer(dst)
            for i, row in enumerate(r):
                if i > 60:
                    break
                w.writerow(row)
    for name in ("gsm8k_train.json", "cmmlu_train.json"):
        rows = json.loads((SHARED_DATA / "routerdc7" / name).read_text())[:40]
        (out / name).write_text(json.dumps(rows))
    return out


@pytest.fixture(scope="module")
def real_router(tmp_path_factory, real_slice):
    from neural_router.training.train import run_train

    cfg = tmp_path_factory.mktemp("cfg") / "train.yaml"
    cfg.write_text("max_length: 64\nhead_tokens: 8\nfreeze_layers: 5\nepochs: 2\ndata: {val_fraction: 0.2}\n")
    return run_train([str(real_slice)], tmp_path_factory.mktemp("r") / "router", cfg, progress=False)


def test_real_minilm_trains_on_both_pools_and_exports_with_parity(real_router, tmp_path):
    from neural_router.inference.export import export_onnx

    rc = json.loads((real_router / "router_config.json").read_text())
    assert len(rc["models"]) == 18
    assert rc["binary"].count(True) == 11  # RouterBench 0/1, RouterDC graded
    # observed RouterBench costs calibrate the profile: ratios near 1 for models whose prices match
    assert 0.5 < rc["cost_scale"][rc["models"].index("gpt-4-1106-preview")] < 2.0
    prompts = [r["question"] for r in json.loads((SHARED_DATA / "routerdc7" / "mmlu_train.json").read_text())[:16]]
    report = export_onnx(real_router, tmp_path / "onnx", int8=True, prompts=prompts)
    assert report["fp32"]["max_abs_diff_quality"] < 1e-4
    t = TorchPredictor.from_pretrained(real_router, device="cpu").predict(prompts)
    o = OnnxPredictor(tmp_path / "onnx", device="cpu").predict(prompts)
    assert np.abs(t.quality - o.quality).max() < 1e-4
    assert (t.quality.argmax(1) == o.quality.argmax(1)).all()


def test_real_router_costs_follow_prices_and_route(real_router):
    r = Router.from_pretrained(real_router)
    p = r.predict(["Write a Python function that reverses a linked list."])
    gpt4, mistral = r.models.index("gpt-4-1106-preview"), r.models.index("mistralai/mistral-7b-chat")
    assert p.cost_usd[0, gpt4] > 10 * p.cost_usd[0, mistral]
    from neural_router import Preferences

    cheap = r.route("What is 2 + 2?", Preferences(1.0, 5.0, 0.0))
    assert p.cost_usd[0, r.models.index(cheap.model)] <= np.median(p.cost_usd[0])


def test_eval_report_on_real_slice(real_router, tmp_path):
    from neural_router.training.evaluate import run_eval

    rep = run_eval(real_router, output=tmp_path, baselines=True)
    assert set(rep["routers"]) >= {"neural-router", "knn", "mlp", "benchmark-prior"}
    aiq, single = rep["routers"]["neural-router"]["aiq"], rep["single_models_aiq"]
    assert aiq <= 1
    # the router beats always sending to one model: the single models' hull AIQ on the same split
    assert aiq > single, f"router AIQ {aiq:.4f} is not above the best single models' {single:.4f}"
    assert (tmp_path / "cost_quality.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "eval_report.json").read_text())["n_test"] == rep["n_test"]


def test_cli_train_heads_only_leaves_the_encoder_untouched(real_slice, tmp_path):
    """`neural-router train --freeze-layers -1` (heads only, the fastest) through the real CLI with the
    default config: the saved encoder is MiniLM's first four layers, unchanged, the heads are trained,
    and the folder routes."""
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    from neural_router.modeling.model import resolve_encoder

    out = tmp_path / "heads"
    r = subprocess.run([sys.executable, "-m", "neural_router.cli", "train", "--data", str(real_slice),
                        "--output", str(out), "--freeze-layers", "-1", "--epochs", "1", "--no-eval"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((out / "training_metrics.json").read_text())["config"]
    assert cfg["freeze_layers"] == -1 and cfg["epochs"] == 1
    assert cfg["encoder_layers"] == 4  # configs/train.yaml: MiniLM's first four layers
    saved = load_file(str(out / "model.safetensors"))
    base = AutoModel.from_pretrained(resolve_encoder("default")).state_dict()
    key = "encoder.encoder.layer.3.attention.self.query.weight"
    assert torch.equal(saved[key], base[key.removeprefix("encoder.")])
    assert not any(k.startswith("encoder.encoder.layer.4.") for k in saved)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    assert Router.from_pretrained(out, device="cpu").route("What is 2 + 2?").model in cfg_models(out)


def cfg_models(router_dir):
    return json.loads((router_dir / "router_config.json").read_text())["models"]
