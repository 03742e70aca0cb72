"""Which model file a router folder runs: the precision choice, the export's recorded default per
device, its aliases (--int8, int8=True), and the names predictors expose (model_file, precision)."""

from __future__ import annotations

import json
import shutil

import pytest

from neural_router import cli
from neural_router.inference.predictors import (EXPORT_REPORT, OnnxPredictor, RouterLoadError, TorchPredictor,
                                                load_predictor, recorded_default, requested_precision)


def with_cpu_default(src, dst, precision: str):
    """A copy of the exported folder ``src`` whose report records ``precision`` as the CPU default."""
    shutil.copytree(src, dst)
    report = json.loads((dst / EXPORT_REPORT).read_text())
    report["default_precision"] = {"cpu": precision, "cuda": "fp32"}
    (dst / EXPORT_REPORT).write_text(json.dumps(report))
    return dst


def test_requested_precision_maps_the_older_flags_and_refuses_contradictions():
    assert requested_precision() == "auto"
    assert requested_precision("auto", int8=True) == "int8"
    assert requested_precision("int8", int8=True) == "int8"
    assert requested_precision(fp16=True) == "fp16" and requested_precision(fp16=False) == "fp32"
    assert requested_precision("fp16", fp16=None) == "fp16"
    with pytest.raises(ValueError, match="int8 or fp16"):
        requested_precision(int8=True, fp16=True)
    with pytest.raises(ValueError, match="contradicts"):
        requested_precision("fp32", int8=True)
    with pytest.raises(ValueError, match="auto, fp32, int8, fp16, bf16"):  # bf16: trained folders only
        requested_precision("fp8")


def test_recorded_default_per_device(tmp_path):
    (tmp_path / "router.onnx").write_bytes(b"")
    assert recorded_default(tmp_path, on_cuda=False) == "fp32"          # no report: an older export
    assert recorded_default(tmp_path, on_cuda=True) == "fp32"
    (tmp_path / "router.fp16.onnx").write_bytes(b"")
    assert recorded_default(tmp_path, on_cuda=True) == "fp16"           # as before: fp16 file on CUDA
    (tmp_path / EXPORT_REPORT).write_text(json.dumps({"fp32": {}}))      # a report without the record
    assert recorded_default(tmp_path, on_cuda=False) == "fp32"
    (tmp_path / EXPORT_REPORT).write_text(json.dumps({"default_precision": {"cpu": "int8", "cuda": "fp16"}}))
    assert recorded_default(tmp_path, on_cuda=False) == "fp32"          # recorded, but the file is gone
    (tmp_path / "router.int8.onnx").write_bytes(b"")
    assert recorded_default(tmp_path, on_cuda=False) == "int8"
    assert recorded_default(tmp_path, on_cuda=True) == "fp16"
    (tmp_path / EXPORT_REPORT).write_text("{not json")
    assert recorded_default(tmp_path, on_cuda=False) == "fp32"
    (tmp_path / EXPORT_REPORT).write_text(json.dumps({"default_precision": {"cpu": "bf16"}}))
    assert recorded_default(tmp_path, on_cuda=False) == "fp32"


def test_exported_folder_runs_fp32_on_cpu_unless_int8_is_recorded_or_asked(tiny_router_dir, tmp_path):
    # the tiny router's validation split is too small to show int8 decides like fp32
    assert json.loads((tiny_router_dir / EXPORT_REPORT).read_text())["default_precision"]["cpu"] == "fp32"
    pred = load_predictor(tiny_router_dir, device="cpu")
    assert (pred.model_file, pred.precision) == ("router.onnx", "fp32")
    for asked in (load_predictor(tiny_router_dir, device="cpu", int8=True),
                  load_predictor(tiny_router_dir, device="cpu", precision="int8"),
                  OnnxPredictor(tiny_router_dir, device="cpu", int8=True)):
        assert (asked.model_file, asked.precision) == ("router.int8.onnx", "int8")

    int8_default = with_cpu_default(tiny_router_dir, tmp_path / "int8", "int8")
    pred = load_predictor(int8_default, device="cpu")
    assert (pred.model_file, pred.precision) == ("router.int8.onnx", "int8")
    fp32 = load_predictor(int8_default, device="cpu", precision="fp32")
    assert (fp32.model_file, fp32.precision) == ("router.onnx", "fp32")
    prompts = ["chat question: hello movie friend", "math question: integral of a prime"]
    assert pred.predict(prompts).quality.shape == fp32.predict(prompts).quality.shape == (2, 3)

    # an older export: no recorded default, so fp32 on CPU even with the int8 file there
    old = tmp_path / "old"
    shutil.copytree(tiny_router_dir, old)
    report = json.loads((old / EXPORT_REPORT).read_text())
    del report["default_precision"]
    (old / EXPORT_REPORT).write_text(json.dumps(report))
    assert load_predictor(old, device="cpu").model_file == "router.onnx"
    (old / EXPORT_REPORT).unlink()
    assert load_predictor(old, device="cpu").model_file == "router.onnx"


def test_missing_file_of_an_asked_precision_is_a_clear_error(tiny_router_dir, tiny_trained_dir, tmp_path):
    with pytest.raises(RouterLoadError, match=r"router.fp16.onnx is missing; run `neural-router export --fp16`"):
        load_predictor(tiny_router_dir, device="cpu", precision="fp16")
    with pytest.raises(RouterLoadError, match=r"trained router folder, which runs fp32.*--int8"):
        load_predictor(tiny_trained_dir, device="cpu", precision="int8")
    torch_pred = load_predictor(tiny_trained_dir, device="cpu", precision="fp32")
    assert isinstance(torch_pred, TorchPredictor)
    assert (torch_pred.model_file, torch_pred.precision) == ("model.safetensors", "fp32")


def test_cuda_that_fails_to_start_falls_back_to_the_cpu_default(tiny_router_dir, tmp_path, monkeypatch):
    import onnxruntime as ort

    int8_default = with_cpu_default(tiny_router_dir, tmp_path / "int8", "int8")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    pred = OnnxPredictor(int8_default, device="auto")   # CUDA's default is fp32 here; the session runs on CPU
    assert pred.provider == "CPUExecutionProvider"
    assert (pred.model_file, pred.precision) == ("router.int8.onnx", "int8")
    asked = OnnxPredictor(int8_default, device="auto", precision="fp32")  # an explicit choice is kept
    assert asked.model_file == "router.onnx"


def test_cli_predict_names_the_file_it_runs_and_takes_precision(tiny_router_dir, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": 1, "prompt": "hello movie"}\n')
    out = tmp_path / "out.jsonl"
    int8_default = with_cpu_default(tiny_router_dir, tmp_path / "int8", "int8")
    base = ["predict", "--input", str(inp), "--output", str(out), "--device", "cpu"]
    cases = [(tiny_router_dir, [], "router.onnx, fp32"), (tiny_router_dir, ["--int8"], "router.int8.onnx, int8"),
             (int8_default, [], "router.int8.onnx, int8"),
             (int8_default, ["--precision", "fp32"], "router.onnx, fp32"),
             (tiny_router_dir, ["--precision", "int8", "--int8"], "router.int8.onnx, int8")]
    for folder, extra, named in cases:
        assert cli.main([*base, "--router", str(folder), *extra]) == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        assert last.startswith("wrote 1 predictions to") and last.endswith(f"(CPUExecutionProvider, {named})"), last
    assert cli.main([*base, "--router", str(tiny_router_dir), "--int8", "--precision", "fp32"]) == 2
    assert "--int8 is --precision int8; it contradicts --precision fp32" in capsys.readouterr().err


def test_eval_evaluates_the_file_predict_runs_and_names_other_precisions(tiny_router_dir, tmp_path):
    from neural_router.training.evaluate import run_eval

    int8_default = with_cpu_default(tiny_router_dir, tmp_path / "int8", "int8")
    report = run_eval(int8_default, output=tmp_path / "auto", baselines=False)
    assert report["predictor"]["precision"] == "int8" and report["predictor"]["model_file"] == "router.int8.onnx"
    assert (tmp_path / "auto" / "eval_report.json").is_file() and (tmp_path / "auto" / "cost_quality.png").is_file()
    report = run_eval(int8_default, output=tmp_path / "fp32", baselines=False, precision="fp32")
    assert report["predictor"]["model_file"] == "router.onnx" and report["predictor"]["int8"] is False
    fp32 = tmp_path / "fp32"
    assert (fp32 / "eval_report.fp32.json").is_file() and not (fp32 / "eval_report.json").exists()
    report = run_eval(tiny_router_dir, output=tmp_path / "alias", baselines=False, int8=True)   # the older flag
    assert report["predictor"] == {"provider": "CPUExecutionProvider", "int8": True, "precision": "int8",
                                   "model_file": "router.int8.onnx"}
    alias = tmp_path / "alias"
    assert (alias / "eval_report.int8.json").is_file() and (alias / "cost_quality.int8.png").is_file()


def test_router_facade_takes_the_precision(tiny_router_dir, tmp_path):
    from neural_router import Router

    int8_default = with_cpu_default(tiny_router_dir, tmp_path / "int8", "int8")
    assert Router.from_pretrained(int8_default, device="cpu").predictor.model_file == "router.int8.onnx"
    assert Router.from_pretrained(int8_default, device="cpu", precision="fp32").predictor.model_file == "router.onnx"
    assert Router.from_pretrained(tiny_router_dir, device="cpu", int8=True).predictor.precision == "int8"
