"""Model, training, export, predictors and the CLI on a tiny random encoder (fast)."""

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from neural_router import Constraints, Preferences, RequestFeatures, Router
from neural_router.modeling.model import RouterConfig, RouterModel
from neural_router.inference.predictors import OnnxPredictor, RouterLoadError, TorchPredictor, load_predictor
from neural_router.modeling.text import encode, head_tail

from tests.conftest import tiny_encoder_config


def test_head_tail_truncation_keeps_both_ends():
    ids = list(range(100))
    assert head_tail(ids, 10, 3) == [0, 1, 2] + list(range(93, 100))
    assert head_tail(ids[:5], 10, 3) == ids[:5]


def test_encode_reports_truncation_and_counts(tiny_trained_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_trained_dir))
    e = encode(tok, ["short", "word " * 500], 32, 4)
    assert e.input_ids.shape == (2, 32)
    assert e.truncated.tolist() == [False, True]
    assert e.input_tokens[1] == 500
    assert e.attention_mask[0].sum() < 32


def test_cached_forward_matches_full_forward():
    cfg = RouterConfig(models=["a", "b"], binary=[True, True], hidden=16)
    m = RouterModel.from_encoder_config(cfg, tiny_encoder_config()).eval()
    ids = torch.randint(1000, 2000, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    feats = torch.randn(3, 6)
    with torch.no_grad():
        full = m(ids, mask, feats)["quality_logits"]
        cached = m.forward_from(m.hidden_after(ids, mask, 1), mask, feats, 1)["quality_logits"]
    assert torch.allclose(full, cached, atol=1e-5)


def test_freeze_lower_freezes_embeddings_and_layers():
    cfg = RouterConfig(models=["a"], binary=[True], hidden=8)
    m = RouterModel.from_encoder_config(cfg, tiny_encoder_config())
    m.freeze_lower(1)
    assert not any(p.requires_grad for p in m.encoder.embeddings.parameters())
    assert not any(p.requires_grad for p in m.encoder.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in m.encoder.encoder.layer[1].parameters())


def test_trained_folder_is_complete_and_learned(tiny_trained_dir):
    names = {p.name for p in tiny_trained_dir.iterdir()}
    assert {"router_config.json", "config.json", "model.safetensors", "models.yaml", "README.md",
            "training_metrics.json", "tokenizer_config.json"} <= names
    tm = json.loads((tiny_trained_dir / "training_metrics.json").read_text())
    assert tm["history"][0]["val_quality_loss"] > 0
    # "summary" counts the training part only (what updates compare their outcomes with)
    assert tm["summary"]["prompts"] == tm["train_prompts"]
    assert tm["data_summary"]["prompts"] == tm["train_prompts"] + tm["val_prompts"]
    assert "# neural-router" in (tiny_trained_dir / "README.md").read_text()
    # synthetic data: 'small' never solves math, 'big' always does -> predictions must reflect that
    r = Router.from_pretrained(tiny_trained_dir)
    p = r.predict(["math question 1: integral derivative equation solve prime"])
    assert p.quality[0, r.models.index("big")] > p.quality[0, r.models.index("small")]


def test_predictions_have_costs_from_pool_and_latency(tiny_trained_dir):
    r = Router.from_pretrained(tiny_trained_dir)
    p = r.predict(["hello weather movie", "python function class loop"])
    j_big, j_small = r.models.index("big"), r.models.index("small")
    assert (p.cost_usd[:, j_big] > p.cost_usd[:, j_small]).all()
    assert (p.latency_ms > 0).all() and (p.output_tokens >= 1).all()
    assert p.quality.shape == (2, 3) and ((0 <= p.quality) & (p.quality <= 1)).all()


def test_onnx_parity_and_same_decisions(tiny_trained_dir, tiny_router_dir):
    report = json.loads((tiny_router_dir / "export_report.json").read_text())
    assert report["fp32"]["max_abs_diff_quality"] < 1e-4
    assert "int8" in report
    prompts = [f"chat question {i}: hello movie friend" for i in range(5)] + ["code " * 200]
    t = TorchPredictor.from_pretrained(tiny_trained_dir, device="cpu").predict(prompts)
    o = OnnxPredictor(tiny_router_dir, device="cpu").predict(prompts)
    assert np.abs(t.quality - o.quality).max() < 1e-4
    assert np.allclose(t.cost_usd, o.cost_usd, rtol=1e-4)
    rt, ro = Router.from_pretrained(tiny_trained_dir), Router.from_pretrained(tiny_router_dir)
    for prefs in (Preferences(), Preferences(1, 0.5, 0), Preferences(1, 0, 1)):
        for i in range(len(prompts)):
            assert rt.decide(t, i, prefs).model == ro.decide(o, i, prefs).model
    assert isinstance(load_predictor(tiny_router_dir), OnnxPredictor)
    assert load_predictor(tiny_router_dir).provider == "CPUExecutionProvider"


def test_route_respects_constraints_and_capabilities(tiny_router_dir):
    r = Router.from_pretrained(tiny_router_dir)
    res = r.route("hello movie", Preferences(), Constraints(denied_models=("big",)))
    assert res.model != "big" and "big" not in res.decision.fallbacks
    img = r.route("describe this picture", features=RequestFeatures(has_image=True))
    assert img.model == "big"  # the only model declared to accept images
    long = r.route("word " * 600)  # 600 prompt tokens > small's 512-token context window
    assert long.model != "small" and long.truncated


def test_load_errors_are_clear(tmp_path, tiny_router_dir):
    with pytest.raises(RouterLoadError, match="does not exist"):
        load_predictor(tmp_path / "missing")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RouterLoadError, match="a_file is a file; a router is a folder"):
        load_predictor(tmp_path / "a_file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RouterLoadError, match="router_config.json is missing"):
        load_predictor(tmp_path / "empty")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_router_dir, bad)
    (bad / "router.onnx").write_bytes(b"not onnx")
    with pytest.raises(RouterLoadError, match="not a loadable ONNX model"):
        load_predictor(bad)
    cfg = json.loads((bad / "router_config.json").read_text())
    cfg["format_version"] = 99
    (bad / "router_config.json").write_text(json.dumps(cfg))
    with pytest.raises(RouterLoadError, match="format_version 99"):
        load_predictor(bad)
    notok = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_router_dir, notok)
    for f in notok.iterdir():
        if f.name.startswith(("tokenizer.", "vocab.")):
            f.unlink()  # transformers would silently build a tokenizer of only the special tokens
    with pytest.raises(RouterLoadError, match="the tokenizer's vocabulary is missing"):
        load_predictor(notok)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "neural_router.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_predict_contract_on_exported_and_trained(tmp_path, tiny_trained_dir, tiny_router_dir):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "prompt": "hello movie"}\n{"id": 7, "prompt": "python loop"}\n')
    for d in (tiny_router_dir, tiny_trained_dir):
        out = tmp_path / f"out-{d.name}.jsonl"
        r = run_cli("predict", "--router", str(d), "--input", str(inp), "--output", str(out))
        assert r.returncode == 0, r.stderr
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert [x["id"] for x in lines] == ["a", 7]
        assert set(lines[0]["models"]) == {"big", "mid", "small"}
        assert set(lines[0]["models"]["big"]) == {"quality", "cost_usd", "latency_ms"}


def test_cli_predict_in_chunks_matches_one_batch(tmp_path, tiny_router_dir, monkeypatch):
    """predict writes a long file chunk by chunk; the chunks' predictions are those of one batch."""
    from neural_router import cli
    from neural_router.inference.predictors import load_predictor

    prompts = ["hello movie", "python loop", "a much longer prompt about the weather today", "x", "sort a list"]
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": n, "prompt": p}) + "\n" for n, p in enumerate(prompts)))
    monkeypatch.setattr(cli, "PREDICT_CHUNK", 2)
    out = tmp_path / "out.jsonl"
    assert cli.main(["predict", "--router", str(tiny_router_dir), "--input", str(inp), "--output", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == list(range(5))
    whole = load_predictor(tiny_router_dir).predict(prompts).as_dicts()
    for line, expected in zip(lines, whole):
        for m, v in expected.items():
            assert line["models"][m] == pytest.approx(v, rel=1e-5, abs=1e-7)


def test_cli_route_and_bad_input(tmp_path, tiny_router_dir):
    r = run_cli("route", "--router", str(tiny_router_dir), "--prompt", "hello movie", "--json",
                "--cost-weight", "0.5")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] in {"big", "mid", "small"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "prompt": "ok"}\n{"id": 2}\nnot json\n{"id": 4, "prompt": "  "}\n')
    r = run_cli("predict", "--router", str(tiny_router_dir), "--input", str(bad), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and not (tmp_path / "o").exists()
    # every bad line is named in one message, with what a good line looks like
    assert "3 bad line(s)" in r.stderr and all(f"line {n}" in r.stderr for n in (2, 3, 4)), r.stderr
    assert "line 1" not in r.stderr and '"prompt": "..."' in r.stderr
    r = run_cli("route", "--router", str(tiny_router_dir), "--prompt", " ")
    assert r.returncode == 2 and "--prompt is empty" in r.stderr
    r = run_cli("predict", "--router", str(tiny_router_dir), "--input", str(tmp_path / "none.jsonl"),
                "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "input file" in r.stderr and "does not exist" in r.stderr
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": 1, "prompt": "ok"}\n')
    r = run_cli("predict", "--router", str(tiny_router_dir), "--input", str(good), "--output", str(tmp_path))
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("eval", "--router", str(tmp_path / "no_router"))
    assert r.returncode == 2 and "router folder" in r.stderr and "does not exist" in r.stderr
    r = run_cli("route", "--router", str(tiny_router_dir), "--prompt", "x", "--deny", "nope")
    assert r.returncode == 2 and "nope" in r.stderr


def test_demo_pipeline_end_to_end(tmp_path, tiny_data_file, tiny_pool_file, tiny_train_config):
    from neural_router.training.demo import run_demo

    out = run_demo([str(tiny_data_file)], tmp_path / "demo", tiny_train_config, tiny_pool_file,
                   encoder_config=tiny_encoder_config(), samples=["math question: solve the integral"])
    rep = json.loads((out / "router" / "eval_report.json").read_text())
    assert {"neural-router", "knn", "mlp", "benchmark-prior"} <= set(rep["routers"])
    assert (out / "router" / "cost_quality.png").is_file()
    assert (out / "onnx" / "router.onnx").is_file() and (out / "onnx" / "router.int8.onnx").is_file()
    assert "AIQ" in (out / "router" / "README.md").read_text()


def test_length_buckets_bound_padding_and_cover_every_row():
    from neural_router.modeling.text import length_buckets

    lengths = np.array([5, 100, 6, 7, 50, 120, 9, 8])
    batches = length_buckets(lengths, 3)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert all(len(b) <= 3 for b in batches)
    for b in batches:  # no short prompt is padded to a long one
        assert lengths[b].max() <= 1.3 * lengths[b].min() + 8


# ---- ONNX Runtime: IO binding and the fp16 model ---------------------------------------------------

PROMPTS = [f"chat question {i}: hello movie friend" for i in range(5)] + ["code " * 200, "x"]


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


@pytest.fixture(scope="module")
def fp16_router_dir(tiny_trained_dir, tmp_path_factory):
    """The tiny router exported with `neural-router export --fp16` (in process)."""
    from neural_router.cli import main

    out = tmp_path_factory.mktemp("router") / "fp16"
    assert main(["export", "--router", str(tiny_trained_dir), "--output", str(out), "--fp16"]) == 0
    return out


def test_fp16_export_writes_a_valid_graph_with_fp32_io(fp16_router_dir):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

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


def test_fp16_is_for_cuda_only(fp16_router_dir, tmp_path, monkeypatch):
    import onnxruntime as ort

    # on CPU the fp32 graph is loaded even though the fp16 one exists
    for pred in (OnnxPredictor(fp16_router_dir, device="cpu"), load_predictor(fp16_router_dir),
                 OnnxPredictor(fp16_router_dir, device="cpu", fp16=False)):
        assert pred.model_file == "router.onnx" and pred.provider == "CPUExecutionProvider"
    # it can be forced (how the export measures parity)
    forced = OnnxPredictor(fp16_router_dir, device="cpu", fp16=True)
    assert forced.model_file == "router.fp16.onnx"
    with pytest.raises(ValueError, match="int8 or fp16"):
        OnnxPredictor(fp16_router_dir, device="cpu", fp16=True, int8=True)
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(fp16_router_dir, plain)
    (plain / "router.fp16.onnx").unlink()
    with pytest.raises(RouterLoadError, match="--fp16"):
        OnnxPredictor(plain, device="cpu", fp16=True)

    # onnxruntime lists CUDA but it fails to initialise (it falls back to CPU): fp32 again
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    fell_back = OnnxPredictor(fp16_router_dir, device="auto")
    assert fell_back.provider == "CPUExecutionProvider" and fell_back.model_file == "router.onnx"
    assert fell_back.io_binding is False

    # a session that runs on CUDA gets the fp16 graph (when there is one) and binds to the GPU
    class CudaSession(ort.InferenceSession):
        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def get_provider_options(self):
            return {"CUDAExecutionProvider": {"device_id": "0"}, "CPUExecutionProvider": {}}

    monkeypatch.setattr(ort, "InferenceSession", CudaSession)
    gpu = OnnxPredictor(fp16_router_dir, device="cuda")
    assert gpu.model_file == "router.fp16.onnx" and gpu.io_binding is True
    assert (gpu._bind_device, gpu._device_id) == ("cuda", 0)
    assert OnnxPredictor(fp16_router_dir, device="cuda", fp16=False).model_file == "router.onnx"
    assert OnnxPredictor(fp16_router_dir, device="cuda", io_binding=False).io_binding is False
    assert OnnxPredictor(plain, device="cuda").model_file == "router.onnx"  # no fp16 file: fp32


def test_export_fuses_attention_and_no_optimize_keeps_the_plain_graph(tiny_trained_dir, tiny_router_dir, tmp_path):
    import onnx

    from neural_router.inference.export import export_onnx

    report = json.loads((tiny_router_dir / "export_report.json").read_text())
    assert report["fusion"]["used"] is True
    assert report["fusion"]["fused_ops"]["Attention"] == 2  # one per layer of the tiny 2-layer encoder
    fused_ops = {n.op_type for n in onnx.load(str(tiny_router_dir / "router.onnx")).graph.node}
    assert {"Attention", "SkipLayerNormalization"} <= fused_ops
    assert "QAttention" in {n.op_type for n in onnx.load(str(tiny_router_dir / "router.int8.onnx")).graph.node}

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


def test_reexport_without_fp16_removes_the_stale_fp16_model(tiny_trained_dir, fp16_router_dir, tmp_path):
    import shutil

    from neural_router.inference.export import export_onnx

    out = tmp_path / "again"
    shutil.copytree(fp16_router_dir, out)
    report = export_onnx(tiny_trained_dir, out)
    assert "fp16" not in report and not (out / "router.fp16.onnx").exists()


def test_encoder_layers_trains_a_smaller_router_that_saves_loads_and_exports(
        tiny_data_file, tiny_pool_file, tiny_train_config, tmp_path):
    """``encoder_layers`` keeps only the encoder's first layers: the saved folder loads as the smaller
    encoder, routes, and exports with one fused attention per kept layer."""
    from neural_router.inference.export import export_onnx
    from neural_router.modeling.model import RouterModel
    from neural_router.training.train import run_train

    out = run_train([str(tiny_data_file)], tmp_path / "small", tiny_train_config, tiny_pool_file,
                    overrides={"encoder_layers": 1, "freeze_layers": 0},
                    encoder_config=tiny_encoder_config(), progress=False)
    model = RouterModel.from_pretrained(out)
    assert model.num_layers() == 1 and len(model.encoder.encoder.layer) == 1
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    assert "1 layer," in (out / "README.md").read_text()  # the model card says how many layers it kept
    assert Router.from_pretrained(out).route("python function loop").model in ("big", "mid", "small")
    report = export_onnx(out, tmp_path / "onnx")
    assert report["fusion"]["fused_ops"]["Attention"] == 1 and report["fp32"]["max_abs_diff_quality"] < 1e-4


def test_encoder_layers_beyond_the_encoder_is_a_clear_error(tiny_data_file, tiny_pool_file, tiny_train_config,
                                                           tmp_path):
    from neural_router.training.train import run_train

    with pytest.raises(ValueError, match="encoder_layers must be between 1 and the encoder's 2 layers, got 3"):
        run_train([str(tiny_data_file)], tmp_path / "bad", tiny_train_config, tiny_pool_file,
                  overrides={"encoder_layers": 3}, encoder_config=tiny_encoder_config(), progress=False)


def test_adversarial_sources_reverses_the_gradient_and_trains_a_router(tiny_data_file, tiny_pool_file,
                                                                       tiny_train_config, tmp_path):
    """``adversarial_sources``: the adversary's gradient reaches the trunk reversed and scaled; the
    router still trains, saves the usual weights (no adversary in them) and routes; one source is an
    error (nothing to tell apart)."""
    from safetensors.torch import load_file

    from neural_router.training.trainer import GradientReversal
    from neural_router.training.train import run_train

    x = torch.ones(3, requires_grad=True)
    (GradientReversal.apply(x, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [-0.5, -1.0, -1.5]

    kw = dict(encoder_config=tiny_encoder_config(), progress=False)
    plain = run_train([str(tiny_data_file)], tmp_path / "plain", tiny_train_config, tiny_pool_file, **kw)
    adv = run_train([str(tiny_data_file)], tmp_path / "adv", tiny_train_config, tiny_pool_file,
                    overrides={"adversarial_sources": 1.0}, **kw)
    w_plain, w_adv = load_file(plain / "model.safetensors"), load_file(adv / "model.safetensors")
    assert w_plain.keys() == w_adv.keys()                       # the adversary is not part of the router
    assert not torch.equal(w_plain["trunk.1.weight"], w_adv["trunk.1.weight"])   # it did push the trunk
    assert Router.from_pretrained(adv).route("python function loop").model in ("big", "mid", "small")

    one = tmp_path / "one.jsonl"
    one.write_text("".join(line for line in tiny_data_file.read_text().splitlines(keepends=True)
                           if '"source": "math"' in line))
    with pytest.raises(ValueError, match="two or more sources"):
        run_train([str(one)], tmp_path / "bad", tiny_train_config, tiny_pool_file,
                  overrides={"adversarial_sources": 1.0}, **kw)


def test_eval_checks_pairs_data_and_names_where_the_data_paths_came_from(tmp_path, tiny_trained_dir):
    import shutil

    from neural_router.data.dataset import DataError
    from neural_router.training.evaluate import run_eval

    tm = json.loads((tiny_trained_dir / "training_metrics.json").read_text())
    assert all(Path(p).is_absolute() for p in tm["data"])   # found again from any working folder
    rep = run_eval(tiny_trained_dir, output=tmp_path / "ok", baselines=False, pairs=[("big-alias", "small")])
    assert rep["routers"]["neural-router"]["two_model"][-1]["strong"] == "big"   # the alias resolved
    with pytest.raises(ValueError, match="'gpt-5' is not one of the router's models"):
        run_eval(tiny_trained_dir, output=tmp_path / "e", baselines=False, pairs=[("gpt-5", "small")])
    with pytest.raises(ValueError, match="give two models as STRONG,WEAK"):
        run_eval(tiny_trained_dir, output=tmp_path / "e", baselines=False, pairs=[("big",)])
    moved = tmp_path / "moved"
    shutil.copytree(tiny_trained_dir, moved)
    (moved / "training_metrics.json").write_text(json.dumps({**tm, "data": ["../nowhere/data.jsonl"]}))
    with pytest.raises(DataError, match=r"(?s)no such file.*training_metrics.json records them; pass --data"):
        run_eval(moved, output=tmp_path / "e", baselines=False)
    from tests.conftest import TINY_POOL   # a pool that knows one more model, and data of only that one

    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(yaml.safe_dump({"models": TINY_POOL["models"] + [{**TINY_POOL["models"][2], "name": "extra",
                                                                          "aliases": []}]}))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "p", "model": "extra", "score": 1.0}) + "\n")
    with pytest.raises(ValueError, match="holds none of the router's models"):
        run_eval(tiny_trained_dir, data=[str(other)], pool_file=pool_file, output=tmp_path / "e", baselines=False)


def test_python_route_checks_its_input_and_takes_dicts(tiny_router_dir):
    r = Router.from_pretrained(tiny_router_dir)
    as_dicts = r.route("hello movie", {"cost_weight": 0.5}, {"denied_models": ["big"]})
    as_classes = r.route("hello movie", Preferences(cost_weight=0.5), Constraints(denied_models=("big",)))
    assert as_dicts.model == as_classes.model != "big"
    with pytest.raises(ValueError, match="the prompt is empty"):
        r.route("  ")
    with pytest.raises(TypeError, match="predict\\(\\) takes a list"):
        r.route(["a", "b"])
    with pytest.raises(ValueError, match="Preferences: .*unexpected keyword argument 'cost'"):
        r.route("hello", {"cost": 0.5})


def test_cli_rejects_bad_numbers_before_loading_anything(tiny_router_dir, tiny_trained_dir, tmp_path):
    r = run_cli("route", "--router", str(tiny_router_dir), "--prompt", "hi", "--max-tokens", "-1")
    assert r.returncode == 2 and "--max-tokens" in r.stderr and "at least 1" in r.stderr
    r = run_cli("train", "--data", "x", "--output", str(tmp_path / "o"), "--epochs", "0")
    assert r.returncode == 2 and "--epochs" in r.stderr and not (tmp_path / "o").exists()
    r = run_cli("serve", "--router", str(tiny_router_dir), "--port", "99999")
    assert r.returncode == 2 and "TCP port" in r.stderr
    (tmp_path / "file").write_text("")
    r = run_cli("export", "--router", str(tiny_trained_dir), "--output", str(tmp_path / "file"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "file" in r.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [3\n")
    r = run_cli("train", "--data", "x", "--output", str(tmp_path / "o"), "--config", str(bad))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and not (tmp_path / "o").exists()


def test_saved_weights_are_as_readable_as_the_rest_of_the_folder(tiny_trained_dir, tmp_path):
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tiny_trained_dir / "model.safetensors") == mode(tiny_trained_dir / "router_config.json")
    r = run_cli("predict", "--router", str(tiny_trained_dir), "--input", str(tmp_path), "--output",
                str(tmp_path / "o.jsonl"))
    assert r.returncode == 2 and "is a folder; give a JSONL file" in r.stderr


def test_exported_folder_has_its_own_model_card(tiny_router_dir):
    card = (tiny_router_dir / "README.md").read_text()
    assert "- format: ONNX, `router.onnx`" in card and "`router.int8.onnx`" in card
    assert f"Router.from_pretrained('{tiny_router_dir.name}')" in card
    assert (tiny_router_dir / "config.json").is_file()   # the encoder's config, as in the trained folder
