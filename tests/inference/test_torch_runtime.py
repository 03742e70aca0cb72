"""The PyTorch runtime (neural_router.inference.torch_runtime): device and precision choice, SDPA
attention, low precision on the CPU (bf16 stands in for the GPU's fp16), length-bucketed batches,
the decision-parity measure and the clear error for CUDA where there is none."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neural_router.inference import torch_runtime as rt
from neural_router.inference.interface import Predictions
from neural_router.inference.predictors import RouterLoadError, TorchPredictor, load_predictor
from neural_router.modeling.model import RouterModel
from neural_router.modeling.text import length_buckets

PROMPTS = ["short one", "a somewhat longer question about python functions and loops",
           "hi", "math: " + "solve the integral of x squared and explain every step " * 6,
           "chat about the weather and a movie", "code " * 40, "prime number sum", "?"]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(rt, "cuda_available", lambda: False)


def test_auto_picks_the_cpu_without_cuda_and_cuda_with_it(no_cuda, monkeypatch):
    assert rt.resolve_device("auto") == "cpu" and rt.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(rt, "cuda_available", lambda: True)
    assert rt.resolve_device("auto") == "cuda" and rt.resolve_device("cuda") == "cuda"
    assert rt.resolve_device("cpu") == "cpu"


def test_cuda_without_cuda_is_a_clear_error(no_cuda):
    with pytest.raises(rt.DeviceUnavailable, match=r"device 'cuda' was asked for, but .*run with device 'cpu'"):
        rt.resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be one of auto, cuda, cpu, not 'gpu'"):
        rt.resolve_device("gpu")


def test_precision_auto_is_fp32_until_a_lower_one_is_shown_to_decide_alike():
    assert rt.resolve_precision("auto", "cuda") == "fp32" and rt.resolve_precision("auto", "cpu") == "fp32"
    assert rt.resolve_precision("fp16", "cuda") == "fp16"
    assert rt.resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="int8 is an ONNX export's precision: run `neural-router export --int8`"):
        rt.resolve_precision("int8", "cpu")
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, fp16, bf16, not 'fp8'"):
        rt.resolve_precision("fp8", "cuda")
    assert rt.batch_size_for("cuda") == rt.CUDA_BATCH_SIZE > rt.batch_size_for("cpu") == rt.CPU_BATCH_SIZE


def _batch(model: RouterModel, tokenizer) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    enc = tokenizer(PROMPTS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], torch.rand(len(PROMPTS), model.config.n_features)


def test_sdpa_attention_computes_what_eager_attention_does(tiny_trained_dir):
    from transformers import AutoTokenizer

    model = RouterModel.from_pretrained(tiny_trained_dir)
    ids, mask, feats = _batch(model, AutoTokenizer.from_pretrained(str(tiny_trained_dir)))
    assert rt.use_sdpa(model.encoder, "eager") == "eager"
    with torch.inference_mode():
        eager = rt.forward(model, ids, mask, feats)
    assert rt.use_sdpa(model.encoder) == "sdpa"
    with torch.inference_mode():
        sdpa = rt.forward(model, ids, mask, feats)
        plain = model(ids, mask, feats)  # the training forward: same numbers in fp32
    for k in eager:
        torch.testing.assert_close(sdpa[k], eager[k], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sdpa[k], plain[k], atol=1e-6, rtol=1e-6)


def test_an_encoder_without_the_switch_keeps_its_attention():
    assert rt.use_sdpa(torch.nn.Linear(2, 2)) == "unknown"


def test_bf16_casts_the_encoder_only_and_decides_like_fp32(tiny_trained_dir):
    fp32 = TorchPredictor.from_pretrained(tiny_trained_dir, device="cpu", precision="fp32")
    bf16 = TorchPredictor.from_pretrained(tiny_trained_dir, device="cpu", precision="bf16")
    assert (bf16.provider, bf16.precision, bf16.model_file) == ("torch-cpu", "bf16", "model.safetensors")
    assert fp32.precision == "fp32" and next(fp32.model.encoder.parameters()).dtype == torch.float32
    assert next(bf16.model.encoder.parameters()).dtype == torch.bfloat16
    assert bf16.model.quality.weight.dtype == torch.float32  # the heads stay fp32
    ref, got = fp32.predict(PROMPTS), bf16.predict(PROMPTS)
    assert got.quality.dtype == np.float64 and np.isfinite(got.quality).all()
    parity = rt.decision_parity(ref, got)
    assert parity["prompts"] == len(PROMPTS)
    assert 0 < parity["max_abs_quality_diff"] < 0.05  # bf16 rounds (so not 0), but only a little
    assert 0 <= parity["same_argmax_share"] <= 1 and set(parity["same_choice"]) == {"quality-only", "balanced"}


def _preds(quality: list[list[float]]) -> Predictions:
    q = np.array(quality, dtype=np.float64)
    n, m = q.shape
    return Predictions([f"m{j}" for j in range(m)], q, np.full((n, m), 1e-3), np.full((n, m), 100.0),
                       np.full((n, m), 10.0), np.full(n, 5), np.zeros(n, dtype=bool))


def test_decision_parity_counts_changed_argmax_and_the_largest_difference():
    ref = _preds([[0.9, 0.1], [0.4, 0.6], [0.5, 0.2], [0.3, 0.7]])
    got = _preds([[0.8, 0.1], [0.7, 0.6], [0.5, 0.2], [0.3, 0.7]])  # row 1's best model changes
    parity = rt.decision_parity(ref, got)
    assert parity["prompts"] == 4 and parity["max_abs_quality_diff"] == pytest.approx(0.3)
    assert parity["same_argmax_share"] == 0.75 and parity["same_choice"]["quality-only"] == 0.75
    assert rt.decision_parity(ref, ref)["max_abs_quality_diff"] == 0.0
    with pytest.raises(ValueError, match="run both on the same prompts"):
        rt.decision_parity(ref, _preds([[0.9, 0.1]]))


def test_length_buckets_cover_every_row_once():
    rng = np.random.default_rng(0)
    for n, batch in ((1, 4), (37, 8), (200, 64)):
        lengths = rng.integers(1, 300, n)
        batches = length_buckets(lengths, batch)
        rows = np.concatenate(batches)
        assert sorted(rows.tolist()) == list(range(n)) and max(len(b) for b in batches) <= batch


def test_bucketed_batches_give_each_prompt_its_own_answer_in_order(tiny_trained_dir):
    pred = TorchPredictor.from_pretrained(tiny_trained_dir, device="cpu")
    pred.batch_size = 3  # several buckets, reordered by length
    together = pred.predict(PROMPTS)
    alone = np.concatenate([pred.predict([p]).quality for p in PROMPTS])
    np.testing.assert_allclose(together.quality, alone, atol=1e-5)
    assert len({tuple(np.round(r, 6)) for r in together.quality}) > 1  # the rows do differ


def test_load_predictor_runs_a_trained_folder_in_the_precision_asked(tiny_trained_dir, tiny_router_dir, no_cuda):
    pred = load_predictor(tiny_trained_dir, device="cpu", precision="bf16")
    assert isinstance(pred, TorchPredictor) and pred.precision == "bf16"
    assert load_predictor(tiny_trained_dir, device="auto").precision == "fp32"  # auto on the CPU
    with pytest.raises(RouterLoadError, match="is an ONNX export, which runs fp32, int8, fp16; bf16 runs on the "
                                              "trained"):
        load_predictor(tiny_router_dir, device="cpu", precision="bf16")
    with pytest.raises(rt.DeviceUnavailable, match="device 'cuda' was asked for"):
        load_predictor(tiny_trained_dir, device="cuda")


def test_predict_and_serve_with_cuda_where_there_is_none_say_so(tiny_trained_dir, tmp_path, capsys, no_cuda):
    from neural_router.cli import main
    from neural_router.serving.api.app import serve

    (tmp_path / "p.jsonl").write_text('{"id": 1, "prompt": "hello"}\n')
    code = main(["predict", "--router", str(tiny_trained_dir), "--input", str(tmp_path / "p.jsonl"),
                 "--output", str(tmp_path / "out.jsonl"), "--device", "cuda"])
    assert code == 2 and "device 'cuda' was asked for" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        serve(tiny_trained_dir, device="cuda")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "neural-router serve: error:" in err and "device 'cuda' was asked for" in err
    assert "Traceback" not in err


def test_health_names_the_torch_backend_and_its_precision(tiny_trained_dir):
    from fastapi.testclient import TestClient

    from neural_router.serving.api.app import create_app
    from neural_router.serving.config import ServeSettings

    pred = load_predictor(tiny_trained_dir, device="cpu", precision="bf16")
    with TestClient(create_app(ServeSettings(device="cpu"), pred)) as client:
        health = client.get("/healthz").json()
        assert (health["provider"], health["device"], health["precision"]) == ("torch-cpu", "cpu", "bf16")
        assert health["model_file"] == "model.safetensors"
        assert client.post("/v1/route", json={"prompt": "solve the integral"}).status_code == 200
