"""What an exported router folder holds (its own model card, the encoder config) and how a missing or
broken folder is refused when loaded: a RouterLoadError that names the problem."""

import json
import shutil

import pytest

from neural_router.inference.predictors import RouterLoadError, load_predictor


def test_exported_folder_has_its_own_model_card(tiny_router_dir):
    card = (tiny_router_dir / "README.md").read_text()
    assert "- format: ONNX, `router.onnx`" in card and "`router.int8.onnx`" in card
    assert f"Router.from_pretrained('{tiny_router_dir.name}')" in card
    assert (tiny_router_dir / "config.json").is_file()   # the encoder's config, as in the trained folder


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(RouterLoadError, match="does not exist"):
        load_predictor(tmp_path / "missing")


def test_a_file_is_not_taken_for_a_folder(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RouterLoadError, match="a_file is a file; a router is a folder"):
        load_predictor(tmp_path / "a_file")


def test_an_empty_folder_lacks_router_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RouterLoadError, match="router_config.json is missing"):
        load_predictor(tmp_path / "empty")


@pytest.fixture
def copied_router(tiny_router_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_router_dir, bad)
    return bad


def test_a_broken_onnx_file_is_named(copied_router):
    (copied_router / "router.onnx").write_bytes(b"not onnx")
    with pytest.raises(RouterLoadError, match="not a loadable ONNX model"):
        load_predictor(copied_router)


def test_an_unknown_format_version_is_named(copied_router):
    cfg = json.loads((copied_router / "router_config.json").read_text())
    cfg["format_version"] = 99
    (copied_router / "router_config.json").write_text(json.dumps(cfg))
    with pytest.raises(RouterLoadError, match="format_version 99"):
        load_predictor(copied_router)


def test_a_missing_tokenizer_vocabulary_is_named(copied_router):
    for f in copied_router.iterdir():
        if f.name.startswith(("tokenizer.", "vocab.")):
            f.unlink()  # transformers would silently build a tokenizer of only the special tokens
    with pytest.raises(RouterLoadError, match="the tokenizer's vocabulary is missing"):
        load_predictor(copied_router)
