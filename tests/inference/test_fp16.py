"""The fp16 export (`neural-router export --fp16`): a valid graph with fp32 inputs and outputs, run only
where CUDA runs it; CPU keeps the fp32 graph."""

import json
import shutil

import pytest

from neural_router.inference.predictors import OnnxPredictor, RouterLoadError, load_predictor


@pytest.fixture(scope="module")
def fp16_router_dir(tiny_trained_dir, tmp_path_factory):
    """The tiny router exported with `neural-router export --fp16` (in process)."""
    from neural_router.cli import main

    out = tmp_path_factory.mktemp("router") / "fp16"
    assert main(["export", "--router", str(tiny_trained_dir), "--output", str(out), "--fp16"]) == 0
    return out


@pytest.fixture
def no_fp16_dir(fp16_router_dir, tmp_path):
    """The same export without its fp16 file."""
    plain = tmp_path / "plain"
    shutil.copytree(fp16_router_dir, plain)
    (plain / "router.fp16.onnx").unlink()
    return plain


def test_fp16_export_reports_a_half_size_model_and_its_parity(fp16_router_dir):
    from neural_router.inference.predictors import ONNX_FP16_FILE

    path = fp16_router_dir / ONNX_FP16_FILE
    assert path.is_file() and not (fp16_router_dir / "router.int8.onnx").exists()
    report = json.loads((fp16_router_dir / "export_report.json").read_text())
    fp16 = report["fp16"]
    assert fp16["onnx"] == ONNX_FP16_FILE and fp16["size_bytes"] == path.stat().st_size
    assert fp16["size_bytes"] < 0.6 * report["fp32"]["size_bytes"]  # the weights are half-size
    if fp16["parity_provider"] == "CPUExecutionProvider":  # recent CPU builds run fp16 graphs
        assert fp16["max_abs_diff_quality"] < 5e-3 and fp16["max_rel_diff_out_tokens"] < 2e-2
    else:
        assert "GPU" in fp16["parity_note"]


def test_fp16_graph_is_valid_with_fp32_io_and_fp32_heads(fp16_router_dir):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    from neural_router.inference.predictors import ONNX_FP16_FILE

    path = fp16_router_dir / ONNX_FP16_FILE
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert types == {"input_ids": TensorProto.INT64, "attention_mask": TensorProto.INT64,
                     "features": TensorProto.FLOAT, "quality": TensorProto.FLOAT,
                     "out_tokens": TensorProto.FLOAT, "latency": TensorProto.FLOAT}
    assert any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer)
    # the heads and the exp() of the log-heads stay fp32: exp overflows fp16 above 65504
    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    exp_nodes = [n for n in model.graph.node if n.op_type == "Exp"]
    assert len(exp_nodes) == 2
    assert all(elem[n.input[0]] == elem[n.output[0]] == TensorProto.FLOAT for n in exp_nodes)
    heads = [n for n in model.graph.node if n.op_type == "Gemm" and n.name.endswith(("latency/Gemm", "tokens/Gemm"))]
    assert len(heads) == 2 and all(elem[n.output[0]] == TensorProto.FLOAT for n in heads)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # loads


def test_cpu_loads_the_fp32_graph_even_though_the_fp16_one_exists(fp16_router_dir):
    for pred in (OnnxPredictor(fp16_router_dir, device="cpu"), load_predictor(fp16_router_dir),
                 OnnxPredictor(fp16_router_dir, device="cpu", fp16=False)):
        assert pred.model_file == "router.onnx" and pred.provider == "CPUExecutionProvider"


def test_fp16_can_be_forced_on_cpu(fp16_router_dir):
    # how the export measures parity
    forced = OnnxPredictor(fp16_router_dir, device="cpu", fp16=True)
    assert forced.model_file == "router.fp16.onnx"


def test_int8_and_fp16_together_are_refused(fp16_router_dir):
    with pytest.raises(ValueError, match="int8 or fp16"):
        OnnxPredictor(fp16_router_dir, device="cpu", fp16=True, int8=True)


def test_forcing_fp16_without_the_file_names_the_export_flag(no_fp16_dir):
    with pytest.raises(RouterLoadError, match="--fp16"):
        OnnxPredictor(no_fp16_dir, device="cpu", fp16=True)


def test_cuda_that_fails_to_start_falls_back_to_the_fp32_graph(fp16_router_dir, monkeypatch):
    import onnxruntime as ort

    # onnxruntime lists CUDA but it fails to initialise (it falls back to CPU): fp32 again
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    fell_back = OnnxPredictor(fp16_router_dir, device="auto")
    assert fell_back.provider == "CPUExecutionProvider" and fell_back.model_file == "router.onnx"
    assert fell_back.io_binding is False


def test_a_cuda_session_gets_the_fp16_graph_and_binds_to_the_gpu(fp16_router_dir, no_fp16_dir, monkeypatch):
    import onnxruntime as ort

    class CudaSession(ort.InferenceSession):
        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def get_provider_options(self):
            return {"CUDAExecutionProvider": {"device_id": "0"}, "CPUExecutionProvider": {}}

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", CudaSession)
    gpu = OnnxPredictor(fp16_router_dir, device="cuda")
    assert gpu.model_file == "router.fp16.onnx" and gpu.io_binding is True
    assert (gpu._bind_device, gpu._device_id) == ("cuda", 0)
    assert OnnxPredictor(fp16_router_dir, device="cuda", fp16=False).model_file == "router.onnx"
    assert OnnxPredictor(fp16_router_dir, device="cuda", io_binding=False).io_binding is False
    assert OnnxPredictor(no_fp16_dir, device="cuda").model_file == "router.onnx"  # no fp16 file: fp32


def test_reexport_without_fp16_removes_the_stale_fp16_model(tiny_trained_dir, fp16_router_dir, tmp_path):
    from neural_router.inference.export import export_onnx

    out = tmp_path / "again"
    shutil.copytree(fp16_router_dir, out)
    report = export_onnx(tiny_trained_dir, out)
    assert "fp16" not in report and not (out / "router.fp16.onnx").exists()
