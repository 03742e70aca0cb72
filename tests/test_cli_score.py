import json
import subprocess
import sys

from neural_router.feedback import FeedbackStore


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
