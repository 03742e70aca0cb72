"""Scorers: each kind on good, bad and malformed inputs; the LLM judge against a real HTTP server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from neural_router.feedback.scoring import (CodeTestScorer, ExactMatchScorer, FunctionScorer, LLMJudgeScorer,
                                   MultipleChoiceScorer, NumericAnswerScorer, RegexScorer, Scorer,
                                   ScorerConfigError, ScoringError, extract_code, load_scorer)

# --------------------------------------------------------------------------------------------------
# Exact match, regex, numeric, multiple choice


def test_exact_match():
    s = ExactMatchScorer()
    assert s.score("q", "  The Eiffel Tower. ", "eiffel tower") == 1.0
    assert s.score("q", "Eiffel", "eiffel tower") == 0.0
    strict = ExactMatchScorer(normalize=False)
    assert strict.score("q", " Paris\n", "Paris") == 1.0
    assert strict.score("q", "paris", "Paris") == 0.0
    with pytest.raises(ScoringError, match="reference"):
        s.score("q", "x", None)


def test_regex():
    assert RegexScorer(r"\bdef \w+\(").score("q", "def f(x): pass") == 1.0
    assert RegexScorer(r"\bdef \w+\(").score("q", "lambda x: x") == 0.0
    grouped = RegexScorer(r"Final answer:\s*(\w+)", group=1, ignore_case=True)
    assert grouped.score("q", "... final ANSWER: Blue", "blue") == 1.0
    assert grouped.score("q", "Final answer: red", "blue") == 0.0
    assert grouped.score("q", "no marker here", "blue") == 0.0
    named = RegexScorer(r"x=(?P<x>\d+)", group="x")
    assert named.score("q", "x=42", "42") == 1.0 and named.score("q", "x=42", "4") == 0.0
    with pytest.raises(ScoringError):
        grouped.score("q", "Final answer: blue", None)
    with pytest.raises(ScorerConfigError, match="invalid regex"):
        RegexScorer("(unclosed")
    with pytest.raises(ScorerConfigError, match="no group"):
        RegexScorer(r"(a)", group=2)


@pytest.mark.parametrize("response,reference,expected", [
    ("She has 18 apples.\n#### 18", "18", 1.0),
    ("Step 1: 3 * 4 = 12. Step 2: 12 + 6 = 18", "18", 1.0),        # last number
    ("The answer is $1,250.50, computed from 3 items", "1250.5", 1.0),  # "answer is" wins
    ("#### 1,000,000", "1000000", 1.0),
    ("so x = -7.", "-7", 1.0),
    ("She has 18 apples, not 19", "18", 0.0),                        # last number is 19
    ("no digits at all", "18", 0.0),
    ("It is 18", "36 / 2 = 18 in 2 boxes\n#### 18 (2 left)", 1.0),   # GSM8K-style reference
    ("It is 2", "36 / 2 = 18 in 2 boxes\n#### 18 (2 left)", 0.0),
])
def test_numeric_answer(response, reference, expected):
    assert NumericAnswerScorer(tolerance=1e-6).score("q", response, reference) == expected


def test_numeric_tolerance_and_errors():
    assert NumericAnswerScorer(tolerance=0.01).score("q", "3.14159", "3.14") == 1.0
    assert NumericAnswerScorer(tolerance=1e-6).score("q", "3.14159", "3.14") == 0.0
    with pytest.raises(ScoringError, match="no number"):
        NumericAnswerScorer().score("q", "3", "three")
    with pytest.raises(ScorerConfigError):
        NumericAnswerScorer(tolerance=-1)


@pytest.mark.parametrize("response,letter", [
    ("B", "B"), ("(B)", "B"), ("b.", "B"), ("Answer: B", "B"), ("The answer is b.", "B"),
    ("answer: (c) because of X", "C"), ("The answer is a bit subtle; I choose (D).", "D"),
    ("Between them, E is right", "E"), ("The correct answer is E", "E"),
])
def test_multiple_choice_extracts(response, letter):
    s = MultipleChoiceScorer()
    assert s.extract(response) == letter
    assert s.score("q", response, letter.lower()) == 1.0
    assert s.score("q", response, "A" if letter != "A" else "B") == 0.0


def test_multiple_choice_unclear_or_invalid():
    s = MultipleChoiceScorer()
    assert s.extract("A or B, hard to say") is None
    assert s.score("q", "I don't know", "A") == 0.0
    assert s.score("q", "F", "A") == 0.0  # not a choice
    with pytest.raises(ScoringError, match="not one of the letters"):
        s.score("q", "A", "Z")
    assert MultipleChoiceScorer(choices="ABCDEFGH").score("q", "Answer: G", "G") == 1.0
    with pytest.raises(ScorerConfigError):
        MultipleChoiceScorer(choices="AAB")


# --------------------------------------------------------------------------------------------------
# Code with tests

TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap (bwrap) is not installed; `make sysdeps` installs it")


@needs_bwrap
def test_code_passes_and_fails():
    s = CodeTestScorer(timeout_s=10)
    fenced = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\nHope it helps."
    assert s.score("write add", fenced, TESTS) == 1.0
    assert s.score("write add", "def add(a, b):\n    return a + b\n", TESTS) == 1.0  # unfenced
    assert s.score("write add", "```python\ndef add(a, b):\n    return a - b\n```", TESTS) == 0.0
    assert s.score("write add", "```python\ndef add(a, b) return\n```", TESTS) == 0.0  # syntax
    assert s.score("write add", "import os\nos.abort()", TESTS) == 0.0  # crash (signal)
    with pytest.raises(ScoringError):
        s.score("write add", "x", None)


def test_extract_code_prefers_python_fences():
    text = "```bash\npip install x\n```\n```python\na = 1\n```\n```py\nb = 2\n```"
    assert extract_code(text) == "a = 1\n\n\nb = 2\n"
    assert extract_code("```\nc = 3\n```") == "c = 3\n"
    assert extract_code("d = 4") == "d = 4"


@needs_bwrap
def test_code_runs_isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("NR_SECRET_TOKEN", "hunter2")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    (tmp_path / "add_helper.py").write_text("def add(a, b):\n    return a + b\n")
    code = textwrap.dedent(f"""
        import os, sys
        assert "NR_SECRET_TOKEN" not in os.environ
        assert sys.flags.isolated == 1
        assert os.getcwd() != {os.getcwd()!r}
        try:
            import add_helper  # only reachable through PYTHONPATH, which -I ignores
        except ImportError:
            pass
        else:
            raise SystemExit(3)
        def add(a, b):
            return a + b
    """)
    assert CodeTestScorer(timeout_s=10).score("q", code, TESTS) == 1.0


def test_unsandboxed_timeout_kills_the_whole_process_group(tmp_path):
    # sandbox="none" (the explicit opt-out) still kills what the program started; the sandboxed
    # case is in test_sandbox.py
    pidfile = tmp_path / "grandchild.pid"
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(p.pid))
        while True:
            time.sleep(0.05)
    """)
    t0 = time.monotonic()
    assert CodeTestScorer(timeout_s=1.0, sandbox="none").score("q", code, "pass") == 0.0
    assert time.monotonic() - t0 < 5
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid), "the grandchild survived the timeout"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


# --------------------------------------------------------------------------------------------------
# LLM judge against a real HTTP server process

JUDGE_SERVER = r'''
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

REPLIES = {"good": "Correct and clear.\nRating: 8", "bare": "10", "bracketed": "Rating: [[4]]",
           "norating": "I would rather not say.", "outofrange": "Rating: 42", "slow": "Rating: 5",
           "auth": "Rating: 1"}
LAST = {}

class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def reply(self, status, body, ctype="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def do_GET(self):
        self.reply(200, json.dumps(LAST))
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["content-length"])))
        LAST.clear(); LAST.update(body=req, path=self.path, auth=self.headers.get("authorization"))
        model = req["model"]
        if self.path != "/v1/chat/completions":
            return self.reply(404, '{"error": {"message": "no such path"}}')
        if model == "slow":
            time.sleep(3)
        if model == "http500":
            return self.reply(500, '{"error": {"message": "boom"}}')
        if model == "notjson":
            return self.reply(200, "<html>oops</html>", "text/html")
        if model == "nochoices":
            return self.reply(200, '{"choices": []}')
        if model == "auth" and self.headers.get("authorization") != "Bearer sekrit":
            return self.reply(401, '{"error": {"message": "bad key"}}')
        msg = {"role": "assistant", "content": REPLIES[model]}
        try:
            self.reply(200, json.dumps({"id": "x", "object": "chat.completion", "model": model,
                                        "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]}))
        except (BrokenPipeError, ConnectionResetError):
            pass

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
srv.daemon_threads = True
print(srv.server_address[1], flush=True)
srv.serve_forever()
'''


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory) -> Iterator[str]:
    script = tmp_path_factory.mktemp("judge") / "judge_server.py"
    script.write_text(JUDGE_SERVER)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


def judge(url: str, model: str, **kw) -> LLMJudgeScorer:
    return LLMJudgeScorer(base_url=url, model=model, api_key_env="NR_TEST_JUDGE_KEY", **kw)


def test_judge_rates_and_sends_the_question(judge_url, monkeypatch):
    monkeypatch.delenv("NR_TEST_JUDGE_KEY", raising=False)
    assert judge(judge_url, "good").score("What is 2+2?", "It is 4.", "4") == pytest.approx(7 / 9)
    sent = httpx.get(judge_url).json()
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] is None
    assert sent["body"]["model"] == "good" and sent["body"]["temperature"] == 0
    user = sent["body"]["messages"][-1]["content"]
    assert "What is 2+2?" in user and "It is 4." in user and "[Reference answer]\n4" in user
    assert judge(judge_url + "/", "bare").score("q", "r") == 1.0
    assert judge(judge_url, "bracketed").score("q", "r") == pytest.approx(3 / 9)
    assert "[Reference answer]" not in httpx.get(judge_url).json()["body"]["messages"][-1]["content"]


def test_judge_sends_the_key_from_the_environment(judge_url, monkeypatch):
    monkeypatch.delenv("NR_TEST_JUDGE_KEY", raising=False)
    with pytest.raises(ScoringError, match="HTTP 401"):
        judge(judge_url, "auth").score("q", "r")
    monkeypatch.setenv("NR_TEST_JUDGE_KEY", "sekrit")
    assert judge(judge_url, "auth").score("q", "r") == 0.0
    assert httpx.get(judge_url).json()["auth"] == "Bearer sekrit"


@pytest.mark.parametrize("model,message", [
    ("norating", "no rating"), ("outofrange", "outside 1-10"), ("http500", "HTTP 500"),
    ("notjson", "no chat completion"), ("nochoices", "no chat completion"),
])
def test_judge_bad_outputs_raise(judge_url, model, message):
    with pytest.raises(ScoringError, match=message):
        judge(judge_url, model).score("q", "r")


def test_judge_timeout_and_unreachable(judge_url):
    t0 = time.monotonic()
    with pytest.raises(ScoringError, match="did not answer within"):
        judge(judge_url, "slow", timeout_s=0.5).score("q", "r")
    assert time.monotonic() - t0 < 2.5
    dead = judge_url.rsplit(":", 1)[0] + ":9/v1"  # the discard port: nothing listens
    with pytest.raises(ScoringError, match="could not be reached"):
        judge(dead, "good", timeout_s=2).score("q", "r")


# --------------------------------------------------------------------------------------------------
# User functions and config

USER_MODULE = '''
def half(prompt, response, reference):
    return 0.5 if reference is None else float(response == reference)
def too_big(prompt, response, reference):
    return 1.5
def words(prompt, response, reference):
    return "great"
def broken(prompt, response, reference):
    raise RuntimeError("kaput")
class Holder:
    @staticmethod
    def one(prompt, response, reference):
        return 1
NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    name = "nr_user_scorers_" + tmp_path.name.replace("-", "_")
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_function_scorer(user_module):
    assert FunctionScorer(f"{user_module}:half").score("q", "r") == 0.5
    assert FunctionScorer(f"{user_module}:half").score("q", "r", "r") == 1.0
    assert FunctionScorer(f"{user_module}:Holder.one").score("q", "r") == 1.0
    for fn, message in (("too_big", "outside"), ("words", "not a number"), ("broken", "kaput")):
        with pytest.raises(ScoringError, match=message):
            FunctionScorer(f"{user_module}:{fn}").score("q", "r")
    for target, message in ((f"{user_module}:missing", "no attribute"),
                            (f"{user_module}:NOT_CALLABLE", "not callable"),
                            ("no_such_module_xyz:f", "cannot import"), ("just_a_name", "module:function")):
        with pytest.raises(ScorerConfigError, match=message):
            FunctionScorer(target)


def test_load_scorer(user_module):
    numeric = load_scorer({"type": "numeric", "tolerance": 0.5})
    assert numeric == NumericAnswerScorer(tolerance=0.5) and numeric.score("q", "#### 10.4", "10") == 1.0
    assert isinstance(load_scorer("multiple_choice"), MultipleChoiceScorer)
    assert load_scorer({"type": "code_tests", "timeout_s": 3, "sandbox": "none"}) == \
        CodeTestScorer(timeout_s=3, sandbox="none")
    assert load_scorer({"type": "regex", "pattern": "a(b)", "group": 1}).score("q", "xab", "b") == 1.0
    judge_ = load_scorer({"type": "llm_judge", "base_url": "http://127.0.0.1:1/v1", "model": "m"})
    assert isinstance(judge_, LLMJudgeScorer) and judge_.api_key_env == "OPENAI_API_KEY"
    fn = load_scorer(f"{user_module}:half")
    assert isinstance(fn, FunctionScorer) and fn.score("q", "r") == 0.5
    assert load_scorer({"type": "function", "target": f"{user_module}:half"}) == fn
    for s in (numeric, fn, judge_, ExactMatchScorer()):
        assert isinstance(s, Scorer)

    with pytest.raises(ScorerConfigError, match="unknown scorer type 'bleu'.*numeric"):
        load_scorer({"type": "bleu"})
    with pytest.raises(ScorerConfigError, match="unknown scorer type None"):
        load_scorer({"tolerance": 1})
    with pytest.raises(ScorerConfigError, match="does not take tol; it takes: tolerance"):
        load_scorer({"type": "numeric", "tol": 1})
    with pytest.raises(ScorerConfigError, match="needs pattern"):
        load_scorer({"type": "regex"})
    with pytest.raises(ScorerConfigError, match="timeout_s"):
        load_scorer({"type": "code_tests", "timeout_s": 0})
    with pytest.raises(ScorerConfigError, match="sandbox"):
        load_scorer({"type": "code_tests", "sandbox": "docker"})
    with pytest.raises(ScorerConfigError, match="base_url"):
        load_scorer({"type": "llm_judge", "base_url": "localhost:8000", "model": "m"})
