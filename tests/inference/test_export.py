"""`neural-router export --int8`: the int8 check on the validation split, its verdict and what the
folder then runs by default."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from neural_router.inference import int8_check
from neural_router.inference.export import export_onnx
from neural_router.inference.interface import Predictions
from neural_router.inference.predictors import EXPORT_REPORT, load_predictor
from neural_router.policy.routing import Preferences


def preds(quality, cost=None) -> Predictions:
    q = np.asarray(quality, dtype=np.float64)
    c = np.ones_like(q) if cost is None else np.asarray(cost, dtype=np.float64)
    return Predictions(["a", "b"], q, c, np.ones_like(q), np.ones_like(q), np.ones(len(q)))


def test_same_choice_share_compares_the_policy_s_choices():
    ref = preds([[0.9, 0.1], [0.2, 0.8], [0.6, 0.5], [0.5, 0.6]])
    got = preds([[0.8, 0.2], [0.3, 0.7], [0.5, 0.6], [0.5, 0.6]])   # one choice of four differs
    assert int8_check.same_choice_share(ref, got, Preferences()) == 0.75
    # with a cost weight, a cheaper model wins where quality is close: both pick b on row 3 now
    cheap_b = [[1.0, 0.01]] * 4
    assert int8_check.same_choice_share(preds(ref.quality, cheap_b), preds(got.quality, cheap_b),
                                        Preferences(cost_weight=1.0)) == 1.0


def test_check_preferences_are_the_cli_and_service_defaults():
    from neural_router.serving.config import ServeSettings

    settings = ServeSettings()
    assert int8_check.CHECK_PREFERENCES[settings.default_preset] == \
        settings.presets[settings.default_preset].to_preferences()
    assert int8_check.CHECK_PREFERENCES["quality-only"] == Preferences()


@pytest.mark.parametrize("prompts,shares,aiq_diff,default,says", [
    (434, (1.0, 0.99), 0.001, True, "int8 is the default on CPU"),
    (434, (1.0, 0.97), 0.0, False, "97.0% of prompts (balanced)"),
    (434, (0.98, 0.98), -0.006, False, "AIQ changes by -0.0060"),
    (434, (0.98, 0.98), math.nan, False, "AIQ changes by +nan"),
    (199, (1.0, 1.0), 0.0, False, "only 199 validation prompts"),
])
def test_int8_verdict_applies_the_stated_tolerances(prompts, shares, aiq_diff, default, says):
    measured = {"prompts": prompts, "same_choice": dict(zip(("quality-only", "balanced"), shares)),
                "aiq_diff": aiq_diff}
    got, why = int8_check.int8_verdict(measured, on_validation=True)
    assert got is default and says in why
    assert int8_check.int8_verdict(measured, on_validation=False)[0] is False


def test_export_records_the_check_on_the_validation_split(tiny_router_dir, tiny_data_file):
    report = json.loads((tiny_router_dir / EXPORT_REPORT).read_text())
    q8 = report["int8"]
    check = q8["decisions"]
    assert check["data"].startswith(f"validation split of {tiny_data_file.name} (val_fraction 0.25")
    assert str(tiny_data_file.parent) not in json.dumps(report)   # no local absolute path
    assert 0 < check["prompts"] < int8_check.INT8_MIN_PROMPTS
    assert set(check["same_choice"]) == set(int8_check.CHECK_PREFERENCES)
    assert all(0 <= v <= 1 for v in check["same_choice"].values())
    assert check["aiq_diff"] == pytest.approx(check["aiq_int8"] - check["aiq_fp32"])
    assert q8["rule"] == {"min_same_choice": 0.98, "max_abs_aiq_diff": 0.005, "min_prompts": 200}
    assert q8["default_on_cpu"] is False and "too few" in q8["reason"]
    assert report["default_precision"] == {"cpu": "fp32", "cuda": "fp32"}


def test_int8_becomes_the_cpu_default_only_when_the_check_passes(tiny_trained_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(int8_check, "INT8_MIN_PROMPTS", 1)
    monkeypatch.setattr(int8_check, "INT8_MIN_SAME_CHOICE", 0.0)
    monkeypatch.setattr(int8_check, "INT8_MAX_AIQ_DIFF", math.inf)
    out = tmp_path / "onnx"
    report = export_onnx(tiny_trained_dir, out, int8=True)
    assert report["int8"]["default_on_cpu"] is True
    assert report["default_precision"]["cpu"] == "int8"
    assert load_predictor(out, device="cpu").model_file == "router.int8.onnx"
    assert "int8, the default on CPU" in (out / "README.md").read_text()

    monkeypatch.setattr(int8_check, "INT8_MIN_SAME_CHOICE", 1.01)  # cannot pass
    report = export_onnx(tiny_trained_dir, out, int8=True)
    assert report["int8"]["default_on_cpu"] is False and "fp32 stays the default" in report["int8"]["reason"]
    assert load_predictor(out, device="cpu").model_file == "router.onnx"
    assert "int8, not the default on CPU" in (out / "README.md").read_text()

    report = export_onnx(tiny_trained_dir, out, int8=False)   # re-export without int8: no stale verdict
    assert "int8" not in report and report["default_precision"] == {"cpu": "fp32", "cuda": "fp32"}
    assert not (out / "router.int8.onnx").exists()


def test_without_validation_data_int8_is_checked_on_parity_prompts_and_not_made_default(
        tiny_trained_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(int8_check, "INT8_MIN_PROMPTS", 1)
    monkeypatch.setattr(int8_check, "INT8_MIN_SAME_CHOICE", 0.0)
    moved = tmp_path / "trained"
    shutil.copytree(tiny_trained_dir, moved)
    tm = json.loads((moved / "training_metrics.json").read_text())
    tm["data"] = [str(tmp_path / "gone" / "outcomes.jsonl")]
    (moved / "training_metrics.json").write_text(json.dumps(tm))
    report = export_onnx(moved, tmp_path / "onnx", int8=True)
    check = report["int8"]["decisions"]
    assert check["data"].startswith("parity prompts (the validation data could not be loaded")
    assert check["prompts"] == 6 and "aiq_diff" not in check
    assert report["int8"]["default_on_cpu"] is False
    assert "not measured on the validation split" in report["int8"]["reason"]
    assert report["default_precision"]["cpu"] == "fp32"
