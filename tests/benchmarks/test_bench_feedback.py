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
