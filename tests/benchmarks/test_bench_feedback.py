"""benchmarks/bench_feedback.py replaces its --out folder only when an earlier replay wrote it."""
import importlib.util
import sys
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("bench_feedback",
                                              Path(__file__).parents[2] / "benchmarks" / "bench_feedback.py")
bench_feedback = importlib.util.module_from_spec(spec)
sys.modules.setdefault("bench_feedback", bench_feedback)   # its dataclasses look their module up there
spec.loader.exec_module(bench_feedback)


def test_only_a_previous_replays_folder_is_replaced(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "data.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="is not a previous replay's folder"):
        bench_feedback.fresh_run_folder(mine)
    assert (mine / "data.txt").read_text() == "keep me"
    run = bench_feedback.fresh_run_folder(tmp_path / "run")           # new: created and marked
    (run / "old_result.json").write_text("{}")
    assert list(bench_feedback.fresh_run_folder(run).iterdir()) == [run / bench_feedback.RUN_MARKER]
    (tmp_path / "empty").mkdir()
    assert bench_feedback.fresh_run_folder(tmp_path / "empty").is_dir()


def test_arguments_are_checked_before_the_out_folder_is_touched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "data.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="unknown methods: bogus"):
        bench_feedback.main(["--methods", "static,bogus", "--out", str(out)])
    assert (out / "data.txt").read_text() == "keep me"


def test_update_settings_are_update_configs_with_the_replays_options():
    from neural_router.training.config import UpdateConfig

    args = bench_feedback.parse_args(["--seed", "3", "--epochs", "4", "--head-refit", "off", "--clip", "5",
                                      "--new-model", "x", "--interpolate", "0.7"])
    base = bench_feedback.base_settings(args)
    # the initial router's --seed/--epochs/--data are not update settings; the rest are update's defaults
    assert (base.seed, base.epochs, base.data, base.head_refit, base.clip) == (0, None, None, None, 5.0)
    assert (base.holdout_fraction, base.n_boot, base.head_transfer) == (0.25, 500, UpdateConfig().head_transfer)
    assert base.preferences().cost_weight == args.cost_weight
    ips = bench_feedback.method_settings("ips", args, 2, ("x",), Path("pool.yaml"))
    assert (ips.seed, ips.interpolate, ips.head_transfer_models, ips.importance_weighting) == (2, 0.7, ("x",), True)
    naive = bench_feedback.method_settings("naive", args, 2, ("x",), None)
    assert (naive.importance_weighting, naive.interpolate, naive.head_transfer, naive.head_refit) == \
        (False, 1.0, None, None)
    with pytest.raises(SystemExit):
        bench_feedback.parse_args(["--clip", "0.5"])   # update's range checks
