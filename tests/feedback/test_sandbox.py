"""The code_tests sandbox against hostile answers: each one scores 0 within its limit and leaves the
caller and the machine as they were, and a correct answer scored right after still scores 1.

Every hostile program exits 0 only if its attack worked, so a sandbox that lets it through makes
the answer score 1 and the test fail. The tests need bubblewrap (``make sysdeps`` installs it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from neural_router.feedback.sandbox import Limits, Sandbox, SandboxError
from neural_router.feedback.scoring import (CodeTestScorer, NoSandboxError, ScorerConfigError,
                                            load_service_scorer)

REPO = Path(__file__).resolve().parents[2]
GOOD = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(2, 3) == 5\n"
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap (bwrap) is not installed; `make sysdeps` installs it")


@pytest.fixture(scope="module")
def scorer() -> CodeTestScorer:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap (bwrap) is not installed; `make sysdeps` installs it")
    return CodeTestScorer(timeout_s=2.0, memory_mb=512, max_processes=16, max_file_mb=4)


def hostile(scorer: CodeTestScorer, code: str, limit_s: float = 6.0) -> float:
    """Score ``code`` (an attack exiting 0 when it worked) and check the caller is unharmed: the
    verdict came within ``limit_s`` and a correct answer scored next still scores 1."""
    t0 = time.monotonic()
    score = scorer.score("q", textwrap.dedent(code), "pass")
    assert time.monotonic() - t0 < limit_s
    assert scorer.score("q", GOOD, TESTS) == 1.0
    return score


def marked(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in ("Z", "X"):
                    found.append(int(entry.name))
        except OSError:
            pass
    return found


def assert_all_gone(marker: str, wait_s: float = 5.0) -> None:
    deadline = time.monotonic() + wait_s
    while marked(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marked(marker) == [], "processes started in the sandbox outlived the run"


# --------------------------------------------------------------------------------------------------
# Ordinary answers


def test_correct_and_failing_answers(scorer):
    assert scorer.score("q", f"```python\n{GOOD}```", TESTS) == 1.0
    assert scorer.score("q", "def add(a, b):\n    return a - b\n", TESTS) == 0.0
    # the working folder and /tmp are writable, and the standard library works
    roundtrip = """
        import json, pathlib, tempfile
        pathlib.Path("out.json").write_text(json.dumps([1, 2]))
        with tempfile.NamedTemporaryFile("w") as f:
            f.write("x")
        assert json.loads(pathlib.Path("out.json").read_text()) == [1, 2]
    """
    assert scorer.score("q", textwrap.dedent(roundtrip) + GOOD, TESTS) == 1.0


# --------------------------------------------------------------------------------------------------
# Resource attacks


def test_process_limit_stops_a_fork_bomb(scorer):
    # a bounded probe first: holding 100 processes means no process limit, and the real bomb
    # below would then harm the machine, so it does not run
    assert hostile(scorer, """
        import os, sys, time
        for _ in range(100):
            if os.fork() == 0:
                time.sleep(3)
                os._exit(0)
        sys.exit(0)
    """) == 0.0
    marker = f"nr-bomb-{uuid.uuid4().hex}"
    assert hostile(scorer, f"""
        import os, sys
        if {marker!r} not in sys.argv:
            os.execv(sys.executable, [sys.executable, "-I", sys.argv[0], {marker!r}])
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """) == 0.0
    assert_all_gone(marker)


def test_memory_limit_stops_a_16_gb_allocation(scorer):
    # an untouched anonymous mapping: refused under the limit, harmless (lazily backed) without it
    assert hostile(scorer, "import mmap\nbig = mmap.mmap(-1, 16 * 1024 ** 3)\n") == 0.0
    assert scorer.score("q", "small = bytearray(64 * 1024 ** 2)\n" + GOOD, TESTS) == 1.0


def test_endless_loop_is_stopped_at_the_time_limit(scorer):
    t0 = time.monotonic()
    assert hostile(scorer, "while True:\n    pass\n") == 0.0
    assert time.monotonic() - t0 < scorer.timeout_s + 4


def test_file_size_limit(scorer):
    assert hostile(scorer, "open('big.bin', 'wb').write(b'x' * (8 * 1024 ** 2))\n") == 0.0


def test_timeout_kills_every_process_the_program_started(scorer):
    marker = f"nr-sleeper-{uuid.uuid4().hex}"
    assert hostile(scorer, f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", {marker!r}],
                         start_new_session=True)
        while True:
            time.sleep(0.05)
    """) == 0.0
    assert_all_gone(marker)


# --------------------------------------------------------------------------------------------------
# Escape attempts


def test_no_network_even_to_loopback(scorer):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        assert hostile(scorer, f"""
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=1).close()
        """) == 0.0
        with pytest.raises(BlockingIOError):
            server.accept()


def test_environment_secrets_are_invisible(scorer, tmp_path):
    secret = f"s3cret-{uuid.uuid4().hex}"
    snoop = f"""
import os, sys
if any({secret!r} in v for v in os.environ.values()):
    sys.exit(0)
for path in ("/proc/self/environ", "/proc/1/environ", f"/proc/{{os.getppid()}}/environ"):
    try:
        if {secret!r}.encode() in open(path, "rb").read():
            sys.exit(0)
    except OSError:
        pass
sys.exit(1)
"""
    # through the command, so the secret is in the caller's own process environment
    assert score_command(tmp_path, [snoop, GOOD], env={"NR_SANDBOX_SECRET": secret}) == [0.0, 1.0]


def test_files_outside_the_folder_are_invisible(scorer, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    targets = [str(secret), str(REPO / "pyproject.toml"), "/etc/passwd", os.path.expanduser("~/.bashrc")]
    assert hostile(scorer, f"""
        import sys
        for path in {targets!r}:
            try:
                open(path).read()
                sys.exit(0)
            except OSError:
                pass
        sys.exit(1)
    """) == 0.0


def test_nothing_outside_the_folder_is_writable(scorer, tmp_path):
    name = f"pwned-{uuid.uuid4().hex}"
    targets = [tmp_path / name, REPO / name, Path(sys.base_prefix) / name, Path("/tmp") / name]
    try:
        assert hostile(scorer, f"""
            import sys
            wrote = False
            for path in {[str(t) for t in targets]!r}:
                try:
                    open(path, "w").write("x")
                    wrote = not path.startswith("/tmp/")   # /tmp is the sandbox's own
                except OSError:
                    pass
            sys.exit(0 if wrote else 1)
        """) == 0.0
        assert [t for t in targets if t.exists()] == []
    finally:
        for t in targets:
            t.unlink(missing_ok=True)


def test_signalling_the_caller_harms_nothing(scorer):
    me = os.getpid()
    hostile(scorer, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    for attack in (f"os.kill({me}, signal.SIGKILL)", f"os.killpg(os.getpgid({me}), signal.SIGKILL)",
                   f"os.kill({os.getppid()}, signal.SIGKILL)", "os.killpg(0, signal.SIGKILL)"):
        assert hostile(scorer, f"import os, signal\n{attack}\n") == 0.0
    assert os.getpid() == me   # still here: the kills never reached this process


def score_command(tmp_path: Path, responses: list[str], env: dict[str, str] | None = None) -> list[float]:
    """The scores ``neural-router score --scorer code_tests`` writes for ``responses`` (tests: TESTS)."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps({"prompt": "p", "response": r, "reference": TESTS}) + "\n"
                           for r in responses))
    r = subprocess.run([sys.executable, "-m", "neural_router.cli", "score", "--input", str(inp),
                        "--scorer", '{"type": "code_tests", "timeout_s": 3}', "--output", str(out)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    assert r.returncode == 0, r.stderr
    return [json.loads(line)["score"] for line in out.read_text().splitlines()]


def test_score_command_survives_an_answer_that_kills_it(scorer, tmp_path):
    killer = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
    assert score_command(tmp_path, [killer, GOOD, GOOD]) == [0.0, 1.0, 1.0]


# --------------------------------------------------------------------------------------------------
# No sandbox: refuse unless told otherwise


@pytest.fixture
def no_bwrap(monkeypatch):
    real = shutil.which
    monkeypatch.setattr("neural_router.feedback.sandbox.shutil.which",
                        lambda name, path=None: None if name == "bwrap" else real(name, path=path))


def test_without_bwrap_the_scorer_refuses_and_names_the_fixes(no_bwrap):
    with pytest.raises(NoSandboxError) as e:
        CodeTestScorer()
    assert "bwrap not found" in str(e.value) and "apt-get install bubblewrap" in str(e.value)
    assert '"sandbox": "none"' in str(e.value)
    assert CodeTestScorer(timeout_s=5, sandbox="none").score("q", GOOD, TESTS) == 1.0   # opted out


def test_a_bwrap_that_fails_its_start_up_check_is_refused(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create a new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    real = shutil.which
    monkeypatch.setattr("neural_router.feedback.sandbox.shutil.which",
                        lambda name, path=None: str(fake) if name == "bwrap" else real(name, path=path))
    with pytest.raises(NoSandboxError, match="No permissions to create a new namespace") as e:
        CodeTestScorer()
    assert "let it create namespaces" in str(e.value) and '"sandbox": "none"' in str(e.value)


def test_the_score_command_refuses_without_bwrap(no_bwrap, tmp_path, capsys):
    from neural_router.cli import main

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"response": GOOD, "reference": TESTS}) + "\n")
    assert main(["score", "--input", str(inp), "--scorer", "code_tests"]) == 2
    assert "install bubblewrap" in capsys.readouterr().err
    assert main(["score", "--input", str(inp), "--scorer",
                 '{"type": "code_tests", "sandbox": "none", "timeout_s": 5}']) == 0


def test_the_service_refuses_unsandboxed_code_unless_allowed(no_bwrap, monkeypatch, caplog):
    from neural_router.serving.config import ServeSettings

    with pytest.raises(NoSandboxError, match="allow_unsandboxed_code") as e:
        load_service_scorer("code_tests", allow_unsandboxed=False)
    assert "bwrap not found" in str(e.value) and "apt-get install bubblewrap" in str(e.value)
    assert '"sandbox": "none"' not in str(e.value)   # not a fix in a service: it is refused too
    assert "bwrap not found" in caplog.text and "allow_unsandboxed_code" in caplog.text
    with pytest.raises(NoSandboxError, match="allow_unsandboxed_code"):
        load_service_scorer({"type": "code_tests", "sandbox": "none"}, allow_unsandboxed=False)
    caplog.clear()
    allowed = load_service_scorer({"type": "code_tests", "timeout_s": 5}, allow_unsandboxed=True)
    assert isinstance(allowed, CodeTestScorer) and allowed.sandbox == "none" and allowed.timeout_s == 5
    assert "UNSANDBOXED" in caplog.text
    assert load_service_scorer("numeric", allow_unsandboxed=False).score("q", "4", "4") == 1.0
    assert ServeSettings().allow_unsandboxed_code is False
    monkeypatch.setenv("NEURAL_ROUTER_ALLOW_UNSANDBOXED_CODE", "1")
    assert ServeSettings().allow_unsandboxed_code is True


@needs_bwrap
def test_the_service_uses_the_sandbox_when_it_works():
    scorer = load_service_scorer({"type": "code_tests", "timeout_s": 5}, allow_unsandboxed=False)
    assert isinstance(scorer, CodeTestScorer) and scorer.sandbox == "bwrap"


@needs_bwrap
def test_a_sandbox_that_cannot_start_the_interpreter_is_refused(tmp_path):
    with pytest.raises(SandboxError, match="does not run"):
        Sandbox.open(str(tmp_path / "no-python"), Limits())
    with pytest.raises(ScorerConfigError, match="max_processes"):
        CodeTestScorer(max_processes=0)


def test_the_service_start_up_refuses_without_a_sandbox(no_bwrap, caplog):
    from neural_router.serving.config import ServeSettings
    from neural_router.serving.engine.decisions import FeedbackLog
    from neural_router.serving.engine.metrics import ServingMetrics

    with pytest.raises(NoSandboxError, match="install bubblewrap"):
        FeedbackLog(ServeSettings(scorer="code_tests"), ServingMetrics())
    assert "allow_unsandboxed_code" in caplog.text
    log = FeedbackLog(ServeSettings(scorer="code_tests", allow_unsandboxed_code=True), ServingMetrics())
    assert isinstance(log.scorer, CodeTestScorer) and log.scorer.sandbox == "none"
