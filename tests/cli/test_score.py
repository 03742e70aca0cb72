import json
import os
import subprocess
import sys

from neural_router.feedback.store import FeedbackStore


def store_with_request_r1(tmp_path) -> str:
    """A feedback store URL holding one logged decision, request r1."""
    url = f"sqlite:///{tmp_path / 'fb.db'}"
    with FeedbackStore.from_url(url) as store:
        store.log_decision(request_id="r1", prompt="2+2?", model="a", router_version="v",
                           predictions={"a": {"quality": 0.5, "cost_usd": 0.001, "latency_ms": 10.0}})
    return url


def score(inp, out, url) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neural_router.cli", "score", "--input", str(inp), "--scorer",
                           '{"type": "numeric"}', "--output", str(out), "--feedback", url],
                          capture_output=True, text=True, timeout=120)


def test_score_command_scores_and_records_feedback(tmp_path):
    url = store_with_request_r1(tmp_path)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"request_id": "r1", "prompt": "2+2?", "response": "It is 4.", "reference": "4"}) + "\n"
                   + json.dumps({"prompt": "x", "response": "B", "reference": "4"}) + "\n")
    out = tmp_path / "out.jsonl"
    r = score(inp, out, url)
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["score"] for x in out.read_text().splitlines()] == [1.0, 0.0]
    assert "recorded 1 as feedback" in r.stdout
    with FeedbackStore.from_url(url) as store:
        assert [o.score for o in store.get_outcomes("r1")] == [1.0]


def test_score_command_rejects_bad_scorer_and_lines(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text('{"prompt": "p"}\n')
    r = subprocess.run([sys.executable, "-m", "neural_router.cli", "score", "--input", str(inp), "--scorer",
                        '{"type": "numeric"}'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "line 1" in r.stderr
    r = subprocess.run([sys.executable, "-m", "neural_router.cli", "score", "--input", str(inp), "--scorer",
                        '{"type": "nope"}'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope" in r.stderr
    r = subprocess.run([sys.executable, "-m", "neural_router.cli", "score", "--input", str(inp), "--scorer",
                        '{"type": numeric'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--scorer" in r.stderr and "not valid JSON" in r.stderr
    inp.write_text(json.dumps({"prompt": "2+2?", "response": "4", "reference": "4"}) + "\n")
    r = subprocess.run([sys.executable, "-m", "neural_router.cli", "score", "--input", str(inp), "--scorer",
                        "numeric"], capture_output=True, text=True, timeout=120)   # a bare type name
    assert r.returncode == 0 and "scored 1 of 1" in r.stdout, r.stderr


def test_score_command_fails_when_a_score_is_not_recorded(tmp_path):
    """A request_id the store does not know: the score is kept in --output, but the exit status says
    that not everything reached the store, so a script does not take it as recorded."""
    url = store_with_request_r1(tmp_path)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"request_id": "r1", "prompt": "2+2?", "response": "4", "reference": "4"}) + "\n"
                   + json.dumps({"request_id": "r9", "prompt": "x", "response": "4", "reference": "4"}) + "\n")
    out = tmp_path / "out.jsonl"
    r = score(inp, out, url)
    assert r.returncode == 1 and "line 2: request r9: not recorded" in r.stderr
    assert "1 score(s) were not recorded" in r.stderr and "recorded 1 as feedback" in r.stdout
    assert len(out.read_text().splitlines()) == 2


def test_score_command_checks_the_whole_file_before_scoring_or_recording(tmp_path):
    """A bad line late in the file stops the command before any response is scored or recorded."""
    url = store_with_request_r1(tmp_path)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"request_id": "r1", "prompt": "2+2?", "response": "4", "reference": "4"}) + "\n"
                   + '{"request_id": "r2", "prompt": "x"}\n')
    out = tmp_path / "out.jsonl"
    r = score(inp, out, url)
    assert r.returncode == 2 and "line 2" in r.stderr and "nothing was processed" in r.stderr
    assert not out.exists()
    with FeedbackStore.from_url(url) as store:
        assert store.get_outcomes("r1") == []


def run_score(inp, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neural_router.cli", "score", "--input", str(inp), "--scorer",
                           '{"type": "numeric"}', *extra], capture_output=True, text=True, timeout=120)


def test_score_command_keeps_every_score_before_a_failure(tmp_path):
    """A response the scorer cannot judge (here: no reference) is named; the others are still scored,
    written and recorded, and the exit status says something went wrong."""
    url = store_with_request_r1(tmp_path)
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"request_id": "r1", "prompt": "2+2?", "response": "4", "reference": "4"}) + "\n"
                   + json.dumps({"prompt": "x", "response": "5"}) + "\n"
                   + json.dumps({"prompt": "y", "response": "7", "reference": "7"}) + "\n")
    out = tmp_path / "out.jsonl"
    r = score(inp, out, url)
    assert r.returncode == 1
    assert "line 2" in r.stderr and "needs a reference" in r.stderr and "1 response(s) could not be scored" in r.stderr
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == ["2+2?", "y"]
    assert "scored 2 of 3" in r.stdout and "recorded 1 as feedback" in r.stdout
    with FeedbackStore.from_url(url) as store:
        assert [o.score for o in store.get_outcomes("r1")] == [1.0]
    # --max-failures 1 stops at the first failure; the line after it is not tried, the one before is kept
    r = run_score(inp, "--output", str(out), "--max-failures", "1")
    assert r.returncode == 1 and "1 line(s) not tried" in r.stderr
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == ["2+2?"]


def test_score_command_checks_store_and_output_before_scoring(tmp_path):
    """A store that cannot be opened or an output that cannot be written is reported before the first
    (possibly expensive) score, so no scoring work is wasted."""
    calls = tmp_path / "calls.txt"
    (tmp_path / "counting_scorer.py").write_text(
        "def score(prompt, response, reference):\n"
        f"    open({str(calls)!r}, 'a').write('x')\n"
        "    return 1.0\n")
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"request_id": "r1", "prompt": "p", "response": "r"}) + "\n")
    base = [sys.executable, "-m", "neural_router.cli", "score", "--input", str(inp), "--scorer", "counting_scorer:score"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run(base + ["--feedback", f"sqlite:///{tmp_path / 'missing.db'}", "--output", str(tmp_path / "o.jsonl")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "missing.db" in r.stderr
    r = subprocess.run(base + ["--output", str(tmp_path)],  # a folder, not a file
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "cannot write" in r.stderr
    assert not calls.exists() and not (tmp_path / "o.jsonl").exists()
    out = tmp_path / "new" / "folder" / "o.jsonl"  # a missing folder is created, as predict does
    r = subprocess.run(base + ["--output", str(out)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and calls.read_text() == "x" and json.loads(out.read_text())["score"] == 1.0


def test_score_command_refuses_feedback_for_a_model_that_did_not_answer(tmp_path):
    """The store itself checks a proxied request's feedback against the model that answered, so
    `score` enforces what /v1/feedback does."""
    url = f"sqlite:///{tmp_path / 'fb.db'}"
    preds = {m: {"quality": 0.5, "cost_usd": 0.001, "latency_ms": 10.0} for m in ("a", "b")}
    with FeedbackStore.from_url(url) as store:
        store.log_decision(request_id="p1", prompt="2+2?", model="b", router_version="v", predictions=preds,
                           context={"proxy": {"chosen_model": "a", "served_model": "b", "attempts": 2}})
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"request_id": "p1", "model": "a", "prompt": "2+2?", "response": "4",
                               "reference": "4"}) + "\n")
    r = score(inp, tmp_path / "out.jsonl", url)
    assert r.returncode == 1 and "was answered by model 'b'" in r.stderr and "recorded 0" in r.stdout
    inp.write_text(json.dumps({"request_id": "p1", "prompt": "2+2?", "response": "4", "reference": "4"}) + "\n")
    r = score(inp, tmp_path / "out.jsonl", url)
    assert r.returncode == 0 and "recorded 1" in r.stdout
    with FeedbackStore.from_url(url) as store:
        assert [(o.model, o.score) for o in store.get_outcomes("p1")] == [("b", 1.0)]
