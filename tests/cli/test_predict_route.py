"""The `neural-router predict` and `route` commands: output contract, chunking and bad input, plus
the numbers every command checks before it loads anything (run as a subprocess, as a user would)."""

import json
import subprocess
import sys

import pytest


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "neural_router.cli", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("which", ["exported", "trained"])
def test_cli_predict_contract(which, tmp_path, tiny_trained_dir, tiny_router_dir):
    d = tiny_router_dir if which == "exported" else tiny_trained_dir
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"id": "a", "prompt": "hello movie"}\n{"id": 7, "prompt": "python loop"}\n')
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


def test_cli_route_prints_the_choice_as_json(tiny_router_dir):
    r = run_cli("route", "--router", str(tiny_router_dir), "--prompt", "hello movie", "--json",
                "--cost-weight", "0.5")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] in {"big", "mid", "small"}


def test_cli_predict_names_every_bad_line_in_one_message(tmp_path, tiny_router_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "prompt": "ok"}\n{"id": 2}\nnot json\n{"id": 4, "prompt": "  "}\n')
    r = run_cli("predict", "--router", str(tiny_router_dir), "--input", str(bad), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and not (tmp_path / "o").exists()
    # every bad line is named in one message, with what a good line looks like
    assert "3 bad line(s)" in r.stderr and all(f"line {n}" in r.stderr for n in (2, 3, 4)), r.stderr
    assert "line 1" not in r.stderr and '"prompt": "..."' in r.stderr


def test_cli_route_refuses_an_empty_prompt(tiny_router_dir):
    r = run_cli("route", "--router", str(tiny_router_dir), "--prompt", " ")
    assert r.returncode == 2 and "--prompt is empty" in r.stderr


def test_cli_predict_names_a_missing_input_file(tmp_path, tiny_router_dir):
    r = run_cli("predict", "--router", str(tiny_router_dir), "--input", str(tmp_path / "none.jsonl"),
                "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "input file" in r.stderr and "does not exist" in r.stderr


def test_cli_predict_says_it_cannot_write_to_a_folder(tmp_path, tiny_router_dir):
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": 1, "prompt": "ok"}\n')
    r = run_cli("predict", "--router", str(tiny_router_dir), "--input", str(good), "--output", str(tmp_path))
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr


def test_cli_predict_refuses_a_folder_as_input(tiny_trained_dir, tmp_path):
    r = run_cli("predict", "--router", str(tiny_trained_dir), "--input", str(tmp_path), "--output",
                str(tmp_path / "o.jsonl"))
    assert r.returncode == 2 and "is a folder; give a JSONL file" in r.stderr


def test_cli_eval_names_a_missing_router_folder(tmp_path):
    r = run_cli("eval", "--router", str(tmp_path / "no_router"))
    assert r.returncode == 2 and "router folder" in r.stderr and "does not exist" in r.stderr


def test_cli_route_names_an_unknown_denied_model(tiny_router_dir):
    r = run_cli("route", "--router", str(tiny_router_dir), "--prompt", "x", "--deny", "nope")
    assert r.returncode == 2 and "nope" in r.stderr


# ---- numbers and files refused before anything is loaded ---------------------------------------

def test_cli_route_refuses_a_negative_max_tokens(tiny_router_dir):
    r = run_cli("route", "--router", str(tiny_router_dir), "--prompt", "hi", "--max-tokens", "-1")
    assert r.returncode == 2 and "--max-tokens" in r.stderr and "at least 1" in r.stderr


def test_cli_train_refuses_zero_epochs(tmp_path):
    r = run_cli("train", "--data", "x", "--output", str(tmp_path / "o"), "--epochs", "0")
    assert r.returncode == 2 and "--epochs" in r.stderr and not (tmp_path / "o").exists()


def test_cli_serve_refuses_a_port_out_of_range(tiny_router_dir):
    r = run_cli("serve", "--router", str(tiny_router_dir), "--port", "99999")
    assert r.returncode == 2 and "TCP port" in r.stderr


def test_cli_export_refuses_a_file_as_output_folder(tiny_trained_dir, tmp_path):
    (tmp_path / "file").write_text("")
    r = run_cli("export", "--router", str(tiny_trained_dir), "--output", str(tmp_path / "file"))
    assert r.returncode == 2 and "Traceback" not in r.stderr and "file" in r.stderr


def test_cli_train_refuses_a_config_that_is_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [3\n")
    r = run_cli("train", "--data", "x", "--output", str(tmp_path / "o"), "--config", str(bad))
    assert r.returncode == 2 and "not valid YAML" in r.stderr and not (tmp_path / "o").exists()
