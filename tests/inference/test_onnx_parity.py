"""An exported ONNX router against the PyTorch one it came from: same numbers, same decisions, whether
run with session.run or IO binding, with the fused attention graph or the plain one."""

import json

import numpy as np

from neural_router import Preferences, Router
from neural_router.inference.predictors import OnnxPredictor, TorchPredictor, load_predictor

PROMPTS = [f"chat question {i}: hello movie friend" for i in range(5)] + ["code " * 200, "x"]


def test_export_report_records_fp32_parity_and_an_int8_model(tiny_router_dir):
    report = json.loads((tiny_router_dir / "export_report.json").read_text())
    assert report["fp32"]["max_abs_diff_quality"] < 1e-4
    assert "int8" in report


def test_onnx_predictions_match_torch_and_give_the_same_decisions(tiny_trained_dir, tiny_router_dir):
    prompts = [f"chat question {i}: hello movie friend" for i in range(5)] + ["code " * 200]
    t = TorchPredictor.from_pretrained(tiny_trained_dir, device="cpu").predict(prompts)
    o = OnnxPredictor(tiny_router_dir, device="cpu").predict(prompts)
    assert np.abs(t.quality - o.quality).max() < 1e-4
    assert np.allclose(t.cost_usd, o.cost_usd, rtol=1e-4)
    rt, ro = Router.from_pretrained(tiny_trained_dir), Router.from_pretrained(tiny_router_dir)
    for prefs in (Preferences(), Preferences(1, 0.5, 0), Preferences(1, 0, 1)):
        for i in range(len(prompts)):
            assert rt.decide(t, i, prefs).model == ro.decide(o, i, prefs).model


def test_load_predictor_runs_an_exported_folder_on_onnx_cpu(tiny_router_dir):
    assert isinstance(load_predictor(tiny_router_dir), OnnxPredictor)
    assert load_predictor(tiny_router_dir).provider == "CPUExecutionProvider"


def test_io_binding_gives_the_same_outputs_as_session_run(tiny_router_dir):
    plain = OnnxPredictor(tiny_router_dir, device="cpu")
    assert plain.io_binding is False  # CPU default: session.run
    bound = OnnxPredictor(tiny_router_dir, device="cpu", io_binding=True)
    assert bound.io_binding is True
    runs = []
    run = bound.session.run_with_iobinding
    bound.session.run_with_iobinding = lambda binding, *a: (runs.append(1), run(binding, *a))[1]
    bound.session.run = None  # the bound path must not fall back to session.run
    a, b = plain.predict(PROMPTS), bound.predict(PROMPTS)
    assert runs, "the IO-binding path was not used"
    for name in ("quality", "output_tokens", "latency_ms", "cost_usd"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # the raw network outputs too, for one padded batch
    ids = np.full((2, 9), 1000, dtype=np.int64)
    mask = np.ones((2, 9), dtype=np.int64)
    mask[1, 5:] = 0
    feats = np.random.default_rng(0).random((2, 6), dtype=np.float32)
    for x, y in zip(plain._run(ids, mask, feats), bound._run(ids, mask, feats)):
        assert x.dtype == y.dtype == np.float32 and np.array_equal(x, y)


# ---- attention fusion ------------------------------------------------------------------------------

def test_export_fuses_attention(tiny_router_dir):
    import onnx

    report = json.loads((tiny_router_dir / "export_report.json").read_text())
    assert report["fusion"]["used"] is True
    assert report["fusion"]["fused_ops"]["Attention"] == 2  # one per layer of the tiny 2-layer encoder
    fused_ops = {n.op_type for n in onnx.load(str(tiny_router_dir / "router.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= fused_ops
    assert "QAttention" in {n.op_type for n in onnx.load(str(tiny_router_dir / "router.int8.onnx")).graph.node}


def test_no_optimize_keeps_the_plain_graph_with_the_same_predictions(tiny_trained_dir, tiny_router_dir, tmp_path):
    import onnx

    from neural_router.inference.export import export_onnx

    plain = export_onnx(tiny_trained_dir, tmp_path / "plain", optimize=False)
    assert "fusion" not in plain and plain["fp32"]["max_abs_diff_quality"] < 1e-4
    plain_ops = {n.op_type for n in onnx.load(str(tmp_path / "plain" / "router.onnx")).graph.node}
    assert not plain_ops & {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"}
    prompts = ["chat question: hello movie friend", "code " * 200]
    fused_q = OnnxPredictor(tiny_router_dir, device="cpu").predict(prompts).quality
    plain_q = OnnxPredictor(tmp_path / "plain", device="cpu").predict(prompts).quality
    assert np.abs(fused_q - plain_q).max() < 1e-5


def test_export_writes_the_plain_graph_when_fusion_fails(tiny_trained_dir, tmp_path, monkeypatch):
    import neural_router.inference.export as export

    def broken(*args, **kwargs):
        raise RuntimeError("no fusion for this graph")

    monkeypatch.setattr(export, "fuse_transformer", broken)
    report = export.export_onnx(tiny_trained_dir, tmp_path / "onnx")
    assert report["fusion"]["used"] is False and "no fusion for this graph" in report["fusion"]["note"]
    assert report["fp32"]["max_abs_diff_quality"] < 1e-4
