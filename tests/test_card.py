"""The model card: shareable (no local absolute paths) and faithful to the folder it describes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from neural_router.card import data_label, write_model_card


@pytest.mark.parametrize("given,label", [
    ("/work/shared/data/routerbench", "routerbench"),
    ("/work/shared/data/routerbench/", "routerbench"),
    ("./runs/data/outcomes.jsonl", "outcomes.jsonl"),
    ("~/data/outcomes.jsonl", "outcomes.jsonl"),
    ("withmartian/routerbench", "withmartian/routerbench"),   # a hub id stays as given
])
def test_data_label_names_local_paths_by_their_last_part(given, label):
    assert data_label(given) == label


def test_card_names_data_and_encoder_without_local_paths(tiny_trained_dir, tiny_data_file, tmp_path):
    card = (tiny_trained_dir / "README.md").read_text()
    assert f"- trained on: {tiny_data_file.name} — " in card
    assert str(tiny_data_file.parent) not in card and "/tmp" not in card
    # training_metrics.json keeps the absolute path: eval and export reload the data from it
    assert json.loads((tiny_trained_dir / "training_metrics.json").read_text())["data"] == [str(tiny_data_file)]

    local = tmp_path / "router"
    shutil.copytree(tiny_trained_dir, local)
    rc = json.loads((local / "router_config.json").read_text())
    rc["encoder"] = str(tmp_path / "encoders" / "my-minilm")
    (local / "router_config.json").write_text(json.dumps(rc))
    card = write_model_card(local).read_text()
    assert "- encoder: `my-minilm`" in card and "base_model:" not in card and str(tmp_path) not in card


def test_exported_card_says_which_file_runs_by_default(tiny_router_dir):
    card = (tiny_router_dir / "README.md").read_text()
    line = next(x for x in card.splitlines() if x.startswith("- format: ONNX, `router.onnx` (fp32"))
    assert "`router.int8.onnx` (int8, not the default on CPU: same choice as fp32 on" in line
    assert "validation prompts, AIQ difference" in line and "details in `export_report.json`" in line
    assert f"Router.from_pretrained('{Path(tiny_router_dir).name}')" in card
