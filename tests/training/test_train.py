"""neural_router.training.train on the tiny data: the saved folder, encoder_layers, adversarial_sources."""

import json

import pytest
import torch

from neural_router import Router

from tests.conftest import tiny_encoder_config


def test_trained_folder_holds_every_file(tiny_trained_dir):
    names = {p.name for p in tiny_trained_dir.iterdir()}
    assert {"router_config.json", "config.json", "model.safetensors", "models.yaml", "README.md",
            "training_metrics.json", "tokenizer_config.json"} <= names
    assert "# neural-router" in (tiny_trained_dir / "README.md").read_text()


def test_training_metrics_count_train_and_validation_prompts(tiny_trained_dir):
    tm = json.loads((tiny_trained_dir / "training_metrics.json").read_text())
    assert tm["history"][0]["val_quality_loss"] > 0
    # "summary" counts the training part only (what updates compare their outcomes with)
    assert tm["summary"]["prompts"] == tm["train_prompts"]
    assert tm["data_summary"]["prompts"] == tm["train_prompts"] + tm["val_prompts"]


def test_trained_router_learned_the_synthetic_pattern(tiny_trained_dir):
    # synthetic data: 'small' never solves math, 'big' always does -> predictions must reflect that
    r = Router.from_pretrained(tiny_trained_dir)
    p = r.predict(["math question 1: integral derivative equation solve prime"])
    assert p.quality[0, r.models.index("big")] > p.quality[0, r.models.index("small")]


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


# ---- adversarial_sources ------------------------------------------------------------------------

def test_gradient_reversal_reverses_and_scales_the_gradient():
    from neural_router.training.trainer import GradientReversal

    x = torch.ones(3, requires_grad=True)
    (GradientReversal.apply(x, 0.5) * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [-0.5, -1.0, -1.5]


def test_adversarial_sources_trains_a_router_without_the_adversary_in_its_weights(
        tiny_data_file, tiny_pool_file, tiny_train_config, tmp_path):
    """The router still trains, saves the usual weights (no adversary in them) and routes."""
    from safetensors.torch import load_file

    from neural_router.training.train import run_train

    kw = dict(encoder_config=tiny_encoder_config(), progress=False)
    plain = run_train([str(tiny_data_file)], tmp_path / "plain", tiny_train_config, tiny_pool_file, **kw)
    adv = run_train([str(tiny_data_file)], tmp_path / "adv", tiny_train_config, tiny_pool_file,
                    overrides={"adversarial_sources": 1.0}, **kw)
    w_plain, w_adv = load_file(plain / "model.safetensors"), load_file(adv / "model.safetensors")
    assert w_plain.keys() == w_adv.keys()                       # the adversary is not part of the router
    assert not torch.equal(w_plain["trunk.1.weight"], w_adv["trunk.1.weight"])   # it did push the trunk
    assert Router.from_pretrained(adv).route("python function loop").model in ("big", "mid", "small")


def test_adversarial_sources_needs_two_sources(tiny_data_file, tiny_pool_file, tiny_train_config, tmp_path):
    """One source is an error: there is nothing to tell apart."""
    from neural_router.training.train import run_train

    one = tmp_path / "one.jsonl"
    one.write_text("".join(line for line in tiny_data_file.read_text().splitlines(keepends=True)
                           if '"source": "math"' in line))
    with pytest.raises(ValueError, match="two or more sources"):
        run_train([str(one)], tmp_path / "bad", tiny_train_config, tiny_pool_file,
                  overrides={"adversarial_sources": 1.0}, encoder_config=tiny_encoder_config(), progress=False)
