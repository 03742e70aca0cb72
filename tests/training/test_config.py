"""TrainConfig and UpdateConfig: one source of defaults for the YAML reference, the command line and
the Python API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from neural_router.cli import build_parser, update_from_args
from neural_router.configs import config_path
from neural_router.training.config import TrainConfig, UpdateConfig, load_train_config

UPDATE = ["update", "--router", "r", "--feedback", "f.db", "--output", "o"]


def test_train_yaml_lists_every_setting_at_its_default():
    raw = yaml.safe_load(config_path("train.yaml").read_text())
    assert set(raw) == set(TrainConfig.model_fields)
    assert set(raw["data"]) == set(TrainConfig().data.model_dump())
    assert TrainConfig.model_validate(raw) == TrainConfig()


def test_train_config_defaults_are_the_shipped_router():
    from neural_router.modeling.model import DEFAULT_ENCODER

    cfg = TrainConfig()
    assert (cfg.encoder, cfg.encoder_layers, cfg.freeze_layers, cfg.max_minutes) == (DEFAULT_ENCODER, 4, 3, 45)
    assert load_train_config(None) == cfg


def test_a_config_file_and_flags_only_override(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("epochs: 3\nseed: 4\n")
    cfg = load_train_config(f, {"seed": 7, "soup": None})
    assert (cfg.epochs, cfg.seed, cfg.soup, cfg.freeze_layers) == (3, 7, 1, TrainConfig().freeze_layers)
    with pytest.raises(ValueError, match=r"the default training config with the command-line options for epochs"):
        load_train_config(None, {"epochs": 0})
    with pytest.raises(FileNotFoundError, match="nope.yaml does not exist"):
        load_train_config(tmp_path / "nope.yaml")


def test_train_flags_take_help_and_ranges_from_train_config(capsys):
    args = build_parser().parse_args(["train", "--data", "d", "--output", "o", "--soup", "2", "--freeze-layers", "-1"])
    assert (args.soup, args.freeze_layers) == (2, -1)
    assert not hasattr(args, "epochs")               # not given: the config decides
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--output", "o", "--epochs", "0"])
    assert "argument --epochs: expected a whole number of at least 1, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "(default: 4)" in capsys.readouterr().out   # encoder_layers, from TrainConfig


def test_train_command_passes_only_the_given_flags(monkeypatch, tmp_path):
    import neural_router.training.train as tr
    from neural_router.cli import main as cli_main

    seen = {}
    monkeypatch.setattr(tr, "run_train", lambda data, out, cfg, pool, over: seen.update(over) or Path(out))
    assert cli_main(["train", "--data", "d.jsonl", "--output", str(tmp_path / "x"), "--soup", "2", "--no-eval"]) == 0
    assert seen == {"soup": 2}


def test_update_options_default_to_update_config():
    from neural_router.cli_options import given_options

    args = build_parser().parse_args(UPDATE)
    assert given_options(args, UpdateConfig) == {}
    assert UpdateConfig(**given_options(args, UpdateConfig)) == UpdateConfig()
    assert UpdateConfig().preferences() is None            # logged preferences
    assert UpdateConfig().interpolation() == 1.0 and UpdateConfig(head_refit=None).interpolation() == 0.5


def test_update_options_reach_the_settings():
    from neural_router.cli_options import given_options

    args = build_parser().parse_args(UPDATE + [
        "--pool", "p.yaml", "--raw-weights", "--naive", "--clip", "3", "--require-ci", "--promote-on", "ips,DR",
        "--interpolate", "1", "--bias-calibration", "20", "--head-refit", "off", "--reward-calibration", "off",
        "--head-transfer-models", "a", "b", "--data", "x", "--data", "y", "--cost-weight", "0.3", "--epochs", "4"])
    uc = UpdateConfig(**given_options(args, UpdateConfig))
    assert (uc.pool_file, uc.normalize_weights, uc.importance_weighting, uc.clip, uc.require_ci) == \
        ("p.yaml", False, False, 3.0, True)
    assert uc.promote_on == ("ips", "dr") and uc.head_transfer_models == ("a", "b") and uc.data == ["x", "y"]
    assert (uc.interpolate, uc.bias_calibration, uc.head_refit, uc.reward_calibration) == (1.0, 20.0, None, None)
    assert uc.preferences().cost_weight == 0.3 and uc.preferences().quality_weight == 1.0 and uc.epochs == 4


@pytest.mark.parametrize("flag, bad, expected", [
    ("--clip", "0.5", "expected a number in [1, inf), got '0.5'"),
    ("--holdout-fraction", "1", "expected a number in [0, 1), got '1'"),
    ("--max-shift", "0", "expected a number in (0, 1], got '0'"),
    ("--head-refit", "0", "expected a number in (0, inf) or 'off', got '0'"),
    ("--interpolate", "nan", "expected a number in (0, 1], got 'nan'"),
    ("--reward-calibration", "lots", "expected a number in [0, inf) or 'off', got 'lots'"),
    ("--soup", "0", "expected a whole number of at least 1, got '0'"),
    ("--promote-on", "dmx", "promote_on: 'dmx' must name one or more of ips, snips, dr, dm"),
])
def test_a_bad_update_option_is_refused_naming_the_flag(flag, bad, expected, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(UPDATE + [flag, bad])
    assert f"argument {flag}: {expected}" in capsys.readouterr().err


def test_update_command_runs_run_update_with_the_settings(monkeypatch):
    import neural_router.training.update as upd

    seen = {}
    monkeypatch.setattr(upd, "run_update", lambda *a, **kw: seen.update(args=a, kw=kw))
    update_from_args(build_parser().parse_args(UPDATE + ["--max-shift", "0.2", "--soup", "3"]))
    router, feedback, output, uc = seen["args"]
    assert (router, feedback, output) == ("r", "f.db", "o")
    assert uc == UpdateConfig(max_shift=0.2, soup=3)


def test_update_config_refuses_bad_settings():
    for bad in ({"holdout_fraction": 1.0}, {"head_refit": 0}, {"head_transfer": -5}, {"reward_calibration": -1},
                {"cold_start_prior": 1.0}, {"promote_on": "ips,foo"}, {"head_refit": float("inf")}, {"bogus": 1}):
        with pytest.raises(ValueError):
            UpdateConfig(**bad)


def test_the_command_line_builds_its_parser_without_torch():
    code = ("import sys; from neural_router.cli import build_parser; build_parser().parse_args(['update', "
            "'--router', 'r', '--feedback', 'f', '--output', 'o']); print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
