"""neural_router.training.evaluate.run_eval: two-model pairs, and data paths found again or named."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from neural_router.data.dataset import DataError
from neural_router.training.evaluate import run_eval


def test_training_metrics_record_absolute_data_paths(tiny_trained_dir):
    tm = json.loads((tiny_trained_dir / "training_metrics.json").read_text())
    assert all(Path(p).is_absolute() for p in tm["data"])   # found again from any working folder


def test_eval_pairs_resolve_aliases(tmp_path, tiny_trained_dir):
    rep = run_eval(tiny_trained_dir, output=tmp_path / "ok", baselines=False, pairs=[("big-alias", "small")])
    assert rep["routers"]["neural-router"]["two_model"][-1]["strong"] == "big"   # the alias resolved


def test_eval_pairs_name_an_unknown_model(tmp_path, tiny_trained_dir):
    with pytest.raises(ValueError, match="'gpt-5' is not one of the router's models"):
        run_eval(tiny_trained_dir, output=tmp_path / "e", baselines=False, pairs=[("gpt-5", "small")])


def test_eval_pairs_need_two_models(tmp_path, tiny_trained_dir):
    with pytest.raises(ValueError, match="give two models as STRONG,WEAK"):
        run_eval(tiny_trained_dir, output=tmp_path / "e", baselines=False, pairs=[("big",)])


def test_eval_says_where_missing_data_paths_came_from(tmp_path, tiny_trained_dir):
    tm = json.loads((tiny_trained_dir / "training_metrics.json").read_text())
    moved = tmp_path / "moved"
    shutil.copytree(tiny_trained_dir, moved)
    (moved / "training_metrics.json").write_text(json.dumps({**tm, "data": ["../nowhere/data.jsonl"]}))
    with pytest.raises(DataError, match=r"(?s)no such file.*training_metrics.json records them; pass --data"):
        run_eval(moved, output=tmp_path / "e", baselines=False)


def test_eval_refuses_data_of_none_of_the_router_s_models(tmp_path, tiny_trained_dir):
    from tests.conftest import TINY_POOL   # a pool that knows one more model, and data of only that one

    pool_file = tmp_path / "pool.yaml"
    pool_file.write_text(yaml.safe_dump({"models": TINY_POOL["models"] + [{**TINY_POOL["models"][2], "name": "extra",
                                                                          "aliases": []}]}))
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"prompt": "p", "model": "extra", "score": 1.0}) + "\n")
    with pytest.raises(ValueError, match="holds none of the router's models"):
        run_eval(tiny_trained_dir, data=[str(other)], pool_file=pool_file, output=tmp_path / "e", baselines=False)
