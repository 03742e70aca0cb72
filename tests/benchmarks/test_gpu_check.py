"""benchmarks/gpu_check.py and make_gpu_bundle.py: the sizes the issue asks for, phases that fail
soft, the fp16 encoder cast back to fp32, and a bundle that git ignores. (The whole check runs on
the CPU with `bash benchmarks/gpu_check.sh --quick --device cpu`; too slow for a unit test.)"""

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check, make_gpu_bundle = _load("gpu_check"), _load("make_gpu_bundle")


def test_the_full_run_measures_the_sizes_the_issue_names():
    cfg = gpu_check.sizes(gpu_check.parse_args([]))
    assert cfg["tokens"] == [64, 256] and cfg["batches"][0] == 1 and cfg["batches"][-1] == 1024
    assert cfg["levels"] == [1, 32, 256, 1024]
    args = gpu_check.parse_args([])
    assert args.device == "cuda" and args.budget_s <= 360  # short enough to repeat within 15 minutes


def test_a_failing_phase_is_recorded_and_the_next_still_runs(tmp_path):
    result = {}
    ph = gpu_check.Phases(tmp_path / "r.json", 100, result)

    def boom(_):
        raise RuntimeError("no GPU here")

    assert ph.run("first", 10, boom) is None
    assert ph.run("second", 10, lambda s: {"box": s}) == {"box": pytest.approx(10, abs=0.5)}
    saved = json.loads((tmp_path / "r.json").read_text())["phases"]
    assert saved["first"]["ok"] is False and "RuntimeError: no GPU here" in saved["first"]["error"]
    assert saved["second"]["ok"] is True
    ph.deadline = 0  # the budget is spent: the next phase is skipped, not run
    assert ph.run("third", 10, lambda s: 1) is None and "no time left" in result["phases"]["third"]["skipped"]


def test_the_fp16_encoder_comes_back_as_fp32(tmp_path):
    import torch
    from transformers import AutoModel

    from tests.conftest import tiny_encoder_config

    AutoModel.from_config(tiny_encoder_config()).to(torch.float16).save_pretrained(str(tmp_path / "half"))
    info = gpu_check.fp32_encoder(tmp_path / "half", tmp_path / "full")
    model = AutoModel.from_pretrained(info["path"])
    assert next(model.parameters()).dtype == torch.float32 and info["layers"] == 2


def test_the_bundle_is_ignored_by_git(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    monkeypatch.setattr(make_gpu_bundle, "REPO", repo)
    make_gpu_bundle.ignore_bundle(".gpu_bundle")
    make_gpu_bundle.ignore_bundle(".gpu_bundle")  # once only
    assert (repo / ".git" / "info" / "exclude").read_text().count("/.gpu_bundle/") == 1
    (repo / ".gpu_bundle").mkdir()
    (repo / ".gpu_bundle" / "big.bin").write_bytes(b"x" * 10)
    assert make_gpu_bundle.travelling_tree_bytes() == 0  # ignored: it travels only when carried


def test_the_shell_entry_point_passes_shellcheck():
    shellcheck = shutil.which("shellcheck") or str(Path(__import__("sys").executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck is not installed")
    done = subprocess.run([shellcheck, str(BENCH / "gpu_check.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
