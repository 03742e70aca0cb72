"""The decision log / feedback store, on SQLite and on a real throwaway PostgreSQL server."""

from __future__ import annotations

import glob
import json
import math
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select as sql_select, text

from neural_router.data.dataset import DataConfig, load_routing_data
from neural_router.feedback.store import (DuplicateDecisionError, DuplicateFeedbackError, FeedbackStore,
                                    InvalidDecisionError, InvalidFeedbackError, UnknownRequestError,
                                    prompt_sha256)
from neural_router.pool import ModelPool
from neural_router.inference.interface import Predictions

REPO = Path(__file__).resolve().parents[2]
PREDS = {"big": {"quality": 0.9, "cost_usd": 0.02, "latency_ms": 900.0},
         "mid": {"quality": 0.7, "cost_usd": 0.002, "latency_ms": 400.0},
         "small": {"quality": 0.4, "cost_usd": 0.0002, "latency_ms": 150.0}}


def log(store: FeedbackStore, rid: str, prompt: str = "What is 2 + 2?", model: str = "mid",
        **kw) -> None:
    store.log_decision(request_id=rid, prompt=prompt, model=model, predictions=PREDS,
                       router_version="router-v1", **kw)


# --------------------------------------------------------------------------------------------------
# A throwaway PostgreSQL server (needs the Debian package `postgresql`)


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or \
        ([shutil.which(name)] if shutil.which(name) else [])
    if not found:
        pytest.fail(f"PostgreSQL's {name} was not found; install the server: apt-get install -y postgresql")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    """initdb + pg_ctl start into a temp dir on a free loopback port; yields the admin URL."""
    as_user: list[str] = []
    datadir = Path(tempfile.mkdtemp(prefix="nr-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and there is no 'postgres' user to run the server as")
        os.chown(datadir, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_user, *args], cwd=datadir, check=True, capture_output=True, timeout=60)

    pgdata = str(datadir / "data")
    try:
        run(_pg_bin("initdb"), "-D", pgdata, "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync")
        run(_pg_bin("pg_ctl"), "-D", pgdata, "-l", str(datadir / "server.log"), "-w", "-t", "60",
            "-o", f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    except subprocess.CalledProcessError as e:
        log_text = (datadir / "server.log").read_text() if (datadir / "server.log").exists() else ""
        shutil.rmtree(datadir, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {e.stderr.decode()} {log_text}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, _pg_bin("pg_ctl"), "-D", pgdata, "-m", "fast", "-w", "stop"],
                       cwd=datadir, capture_output=True, timeout=60)
        shutil.rmtree(datadir, ignore_errors=True)


def _fresh_pg_database(admin_url: str) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    # the plain scheme: the store must pick the psycopg 3 driver itself
    return admin_url.rsplit("/", 1)[0].replace("postgresql+psycopg://", "postgresql://") + "/" + name


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'feedback.db'}"
    return _fresh_pg_database(request.getfixturevalue("pg_server"))


@pytest.fixture
def store(store_url) -> Iterator[FeedbackStore]:
    s = FeedbackStore.from_url(store_url)
    yield s
    s.close()


# --------------------------------------------------------------------------------------------------
# Round trip, on both backends


def test_round_trip(store, store_url):
    t0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    dec = store.log_decision(request_id="r1", prompt="What is 2 + 2?", model="mid", predictions=PREDS,
                             router_version="router-v1", propensity=0.8,
                             preferences={"quality_weight": 1.0, "cost_weight": 10.0},
                             exploration="epsilon-greedy", input_tokens=9, created_at=t0)
    log(store, "r2", prompt="Say hi", model="small", created_at=t0 + timedelta(seconds=1))
    log(store, "r3", prompt="never answered", created_at=t0 + timedelta(seconds=2))
    o1 = store.add_feedback("r1", 1.0, latency_ms=420.0, cost_usd=0.0021, response="4")
    o2 = store.add_feedback("r1", 4, model="big", score_range=(1, 5), output_tokens=7)
    o3 = store.add_feedback("r2", 0.0)

    store.close()
    reopened = FeedbackStore.from_url(store_url)
    got = reopened.get_decision("r1")
    assert got == dec
    assert got.created_at == t0 and got.predictions == PREDS and got.prompt == "What is 2 + 2?"
    assert got.prompt_sha256 == prompt_sha256("What is 2 + 2?") and got.retention == "full"
    assert reopened.get_outcomes("r1") == [o1, o2]
    assert o1.model == "mid" and o2.score == pytest.approx(0.75)  # (4 - 1) / (5 - 1)

    pairs = list(reopened.iter_logged())
    assert [(d.request_id, o.model) for d, o in pairs] == [("r1", "mid"), ("r2", "small")]
    assert pairs[0][0].propensity == 0.8 and pairs[0][1] == o1
    assert [(d.request_id, o.model) for d, o in reopened.iter_logged(chosen_only=False)] == \
        [("r1", "mid"), ("r1", "big"), ("r2", "small")]
    assert list(reopened.iter_logged(since=t0 + timedelta(milliseconds=500))) == [(pairs[1][0], o3)]

    rows = reopened.export_long()
    assert rows == [
        {"prompt": "What is 2 + 2?", "model": "mid", "score": 1.0, "cost_usd": 0.0021,
         "latency_ms": 420.0, "input_tokens": 9, "output_tokens": 1.0, "source": "feedback",
         "id": "r1", "propensity": 0.8, "chosen": True},
        {"prompt": "What is 2 + 2?", "model": "big", "score": 0.75, "cost_usd": None,
         "latency_ms": None, "input_tokens": 9, "output_tokens": 7.0, "source": "feedback",
         "id": "r1", "propensity": None, "chosen": False},
        {"prompt": "Say hi", "model": "small", "score": 0.0, "cost_usd": None, "latency_ms": None,
         "input_tokens": None, "output_tokens": None, "source": "feedback", "id": "r2",
         "propensity": 1.0, "chosen": True},
    ]
    reopened.close()


def test_hash_retention_never_stores_the_prompt(store_url):
    secret = "my card number is 4111-1111-1111-1111"
    store = FeedbackStore.from_url(store_url, retention="hash")
    dec = store.log_decision(request_id="h1", prompt=secret, model="big", predictions=PREDS,
                             router_version="v")
    store.add_feedback("h1", 1.0)
    assert dec.prompt is None and dec.retention == "hash"
    assert dec.prompt_sha256 == prompt_sha256(secret)
    with store.engine.connect() as conn:
        row = conn.execute(sql_select(store.decisions)).mappings().one()
    assert row["prompt"] is None and row["prompt_sha256"] == prompt_sha256(secret)
    assert [d.prompt for d, _ in store.iter_logged()] == [None]
    assert store.export_long() == []  # nothing to train on without the prompt
    store.close()
    if store_url.startswith("sqlite"):  # not in the database file nor in its WAL
        folder = Path(store_url.removeprefix("sqlite:///")).parent
        files = list(folder.iterdir())
        assert files and all(secret.encode() not in f.read_bytes() for f in files)


def test_errors(store):
    log(store, "e1")
    with pytest.raises(UnknownRequestError):
        store.add_feedback("nope", 1.0)
    for bad in (1.5, -0.1, math.nan, math.inf, True):
        with pytest.raises(InvalidFeedbackError):
            store.add_feedback("e1", bad)
    with pytest.raises(InvalidFeedbackError, match="outside score_range"):
        store.add_feedback("e1", 7)  # a 1-10 rating given without its range
    with pytest.raises(InvalidFeedbackError, match="low < high"):
        store.add_feedback("e1", 1, score_range=(1, 1))
    with pytest.raises(InvalidFeedbackError, match="not among the predicted models"):
        store.add_feedback("e1", 1.0, model="gpt-unknown")
    with pytest.raises(InvalidFeedbackError, match="latency_ms"):
        store.add_feedback("e1", 1.0, latency_ms=-5)
    assert store.get_outcomes("e1") == []  # nothing was written by the rejected calls

    store.add_feedback("e1", 0.5)
    with pytest.raises(DuplicateFeedbackError):
        store.add_feedback("e1", 1.0)
    with pytest.raises(DuplicateFeedbackError):
        store.add_feedback("e1", 1.0, model="mid")  # "mid" is the chosen model
    store.add_feedback("e1", 1.0, model="small")  # another model is fine
    assert [o.score for o in store.get_outcomes("e1")] == [0.5, 1.0]

    with pytest.raises(DuplicateDecisionError):
        log(store, "e1")
    with pytest.raises(InvalidDecisionError, match="propensity"):
        log(store, "e2", propensity=0.0)
    with pytest.raises(InvalidDecisionError, match="no prediction"):
        log(store, "e3", model="other")
    with pytest.raises(UnknownRequestError):
        store.get_decision("e2")


def test_concurrent_feedback_is_recorded_once(store):
    log(store, "c1")
    results: list[str] = []

    def worker(i: int) -> None:
        try:
            store.add_feedback("c1", i / 10)
            results.append("ok")
        except DuplicateFeedbackError:
            results.append("dup")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["dup"] * 5 + ["ok"]
    assert len(store.get_outcomes("c1")) == 1


# --------------------------------------------------------------------------------------------------
# SQLite specifics and the training hand-off


def test_sqlite_runs_in_wal_with_full_sync(tmp_path):
    store = FeedbackStore.from_url(tmp_path / "plain-path.db")  # a bare path means SQLite
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    store.close()


def test_logs_a_predictions_row_and_rejects_batches(tmp_path):
    store = FeedbackStore.from_url(tmp_path / "f.db")
    row = Predictions(models=["big", "small"], quality=np.array([[0.9, 0.3]]),
                      cost_usd=np.array([[0.01, 0.001]]), latency_ms=np.array([[800.0, 90.0]]),
                      output_tokens=np.array([[50.0, 40.0]]), input_tokens=np.array([12]))
    dec = store.log_decision(request_id="p1", prompt="x", model="small", predictions=row,
                             router_version="v", input_tokens=12)
    assert store.get_decision("p1").predictions == {
        "big": {"quality": 0.9, "cost_usd": 0.01, "latency_ms": 800.0},
        "small": {"quality": 0.3, "cost_usd": 0.001, "latency_ms": 90.0}} == dec.predictions
    two = Predictions(models=["a"], quality=np.zeros((2, 1)), cost_usd=np.zeros((2, 1)),
                      latency_ms=np.zeros((2, 1)), output_tokens=np.zeros((2, 1)),
                      input_tokens=np.zeros(2))
    with pytest.raises(InvalidDecisionError, match="2 rows"):
        store.log_decision(request_id="p2", prompt="x", model="a", predictions=two, router_version="v")
    store.close()


def test_exported_jsonl_is_training_data(tmp_path, tiny_pool_file):
    store = FeedbackStore.from_url(tmp_path / "f.db")
    for i in range(4):
        log(store, f"t{i}", prompt=f"prompt number {i}", model="big")
        store.add_feedback(f"t{i}", float(i % 2), latency_ms=100.0 + i, response="x" * 40)
    store.add_feedback("t0", 1.0, model="small", cost_usd=0.001)
    out = tmp_path / "export" / "logged.jsonl"
    rows = store.export_long(out)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert len(rows) == 5

    ds = load_routing_data(str(out), ModelPool.from_yaml(tiny_pool_file), DataConfig())
    assert ds.prompts == [f"prompt number {i}" for i in range(4)]
    assert ds.models == ["big", "small"] and ds.ids == ["t0", "t1", "t2", "t3"]
    np.testing.assert_allclose(ds.scores[:, 0], [0, 1, 0, 1])
    np.testing.assert_allclose(ds.scores[:, 1], [1, np.nan, np.nan, np.nan])
    np.testing.assert_allclose(ds.latency_ms[:, 0], [100, 101, 102, 103])
    np.testing.assert_allclose(ds.output_tokens[:, 0], [10, 10, 10, 10])  # 40 chars / 4
    assert set(ds.sources) == {"feedback"}
    store.close()


CHILD = r"""
import sys, time
from neural_router.feedback.store import FeedbackStore
store = FeedbackStore.from_url(sys.argv[1])
preds = {"a": {"quality": 0.5, "cost_usd": 0.01, "latency_ms": 100.0}}
store.log_decision(request_id="crash-1", prompt="survive me", model="a", predictions=preds,
                   router_version="v", propensity=0.25)
store.add_feedback("crash-1", 1.0, latency_ms=12.0)
print("acked", flush=True)
time.sleep(600)
"""


def test_acknowledged_writes_survive_sigkill(tmp_path):
    db = tmp_path / "crash.db"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, f"sqlite:///{db}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "child did not acknowledge within 60 s"
        line = proc.stdout.readline()
        assert line == b"acked\n", (line, proc.stderr.read() if proc.poll() is not None else b"")
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wal = Path(f"{db}-wal")
    assert wal.exists() and wal.stat().st_size > 0  # never checkpointed: recovery reads the WAL

    store = FeedbackStore.from_url(db)
    dec = store.get_decision("crash-1")
    assert dec.prompt == "survive me" and dec.propensity == 0.25
    [out] = store.get_outcomes("crash-1")
    assert out.model == "a" and out.score == 1.0 and out.latency_ms == 12.0
    store.close()


def test_context_round_trips_and_old_stores_gain_the_column(tmp_path):
    """The request's features and constraints are logged with the decision (off-policy estimates
    replay the policy with them); a store written before the column existed is migrated in place."""
    path = tmp_path / "old.db"
    old = create_engine(f"sqlite:///{path}")
    with old.begin() as conn:  # the decisions table as version 1 wrote it, with one row
        conn.execute(text(
            "CREATE TABLE decisions (request_id VARCHAR(128) PRIMARY KEY, created_at DATETIME NOT NULL, "
            "router_version VARCHAR(256) NOT NULL, prompt TEXT, prompt_sha256 VARCHAR(64) NOT NULL, "
            "retention VARCHAR(8) NOT NULL, model VARCHAR(256) NOT NULL, propensity FLOAT NOT NULL, "
            "predictions JSON NOT NULL, preferences JSON NOT NULL, exploration VARCHAR(128) NOT NULL, "
            "input_tokens INTEGER)"))
        conn.execute(text(
            "INSERT INTO decisions VALUES ('old', '2025-01-01 00:00:00.000000', 'v1', 'hi', 'x', 'full', "
            "'mid', 1.0, :p, '{}', 'greedy', 3)"), {"p": json.dumps(PREDS)})
    old.dispose()
    store = FeedbackStore.from_url(path)
    ctx = {"has_image": True, "max_output_tokens": 256,
           "constraints": {"max_cost_usd": 0.01, "denied_models": ["small"]}}
    log(store, "new", model="big", context=ctx)
    assert store.get_decision("new").context == ctx
    assert store.get_decision("old").context == {} and store.get_decision("old").model == "mid"
    with pytest.raises(InvalidDecisionError, match="context"):
        log(store, "bad", context={"x": float("nan")})
    store.close()


def test_decision_context_round_trips_through_replay():
    """What the service logs (decision_context) is what off-policy replay reads back (replay_context)."""
    from neural_router.feedback.store import decision_context, replay_context
    from neural_router.policy.routing import Constraints
    from neural_router.inference.interface import RequestFeatures

    features = RequestFeatures(has_image=True, max_output_tokens=64)
    cons = Constraints(max_cost_usd=0.0, min_quality=0.5, allowed_models=("big", "mid"), denied_models=("small",))
    ctx = decision_context(features, cons)
    assert json.loads(json.dumps(ctx)) == ctx
    assert replay_context(ctx, ["big", "mid", "small"]) == (features, cons)
    assert decision_context(RequestFeatures(), Constraints()) == {}
    # models the replaying router does not know are dropped
    _, known = replay_context(ctx, ["big", "small"])
    assert known.allowed_models == ("big",) and known.denied_models == ("small",)


def test_a_store_that_cannot_be_opened_is_a_clear_error(tmp_path):
    """Readers of the logs (update, score) get a message naming the store, never a traceback or a new
    empty file, and the password of a server URL stays hidden."""
    from neural_router.feedback.store import StoreUnavailableError

    missing = tmp_path / "none.db"
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        FeedbackStore.from_url(f"sqlite:///{missing}", must_exist=True)
    assert not missing.exists()
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello, not a database\n" * 100)
    with pytest.raises(StoreUnavailableError, match="notes.txt: file is not a database"):
        FeedbackStore.from_url(not_db)
    with pytest.raises(StoreUnavailableError) as e:
        FeedbackStore.from_url("postgresql://user:hunter2@127.0.0.1:1/db")
    assert "cannot open the feedback store postgresql://user:***@127.0.0.1:1/db" in str(e.value)
    assert "hunter2" not in str(e.value)
    with pytest.raises(StoreUnavailableError, match="cannot open the feedback store postgres://u@"):
        FeedbackStore.from_url("postgres://u@127.0.0.1:1/db")   # the common spelling reaches psycopg too
    with pytest.raises(StoreUnavailableError, match="mysql://x:\\*\\*\\*@h/db: this kind of database cannot be used"):
        FeedbackStore.from_url("mysql://x:pw@h/db")   # no driver installed: named, not a traceback
    with pytest.raises(StoreUnavailableError, match="is a folder; give the SQLite file in it"):
        FeedbackStore.from_url(tmp_path, must_exist=True)
    import sqlite3

    other = tmp_path / "other.db"   # someone else's SQLite database: named, and left as it was
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE notes (x TEXT)")
    with pytest.raises(StoreUnavailableError, match="other.db holds no feedback store"):
        FeedbackStore.from_url(other, must_exist=True)
    with sqlite3.connect(other) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["notes"]
    with FeedbackStore.from_url(tmp_path / "new.db") as store:   # the service's default: created
        assert store.export_long() == []


def test_an_answer_from_a_fallback_is_no_off_policy_sample(tmp_path):
    """After the proxy fell back, the logged model answered but the policy did not pick it: its outcome
    is kept for training as an unweighted observation, never as the policy's action with the choice's
    propensity, and off-policy evaluation leaves the request out."""
    preds = {m: {"quality": 0.5, "cost_usd": 0.001, "latency_ms": 10.0} for m in ("a", "b")}
    with FeedbackStore.from_url(tmp_path / "fb.db") as store:
        store.log_decision(request_id="r1", prompt="p1", model="a", router_version="v", predictions=preds,
                           propensity=0.8)
        store.log_decision(request_id="r2", prompt="p2", model="b", router_version="v", predictions=preds,
                           propensity=0.8, context={"proxy": {"chosen_model": "a", "served_model": "b",
                                                              "attempts": 2}})
        store.add_feedback("r1", 1.0)
        store.add_feedback("r2", 1.0)
        rows = {r["id"]: r for r in store.export_long()}
        assert (rows["r1"]["chosen"], rows["r1"]["propensity"]) == (True, 0.8)
        assert (rows["r2"]["chosen"], rows["r2"]["propensity"]) == (False, None) and rows["r2"]["model"] == "b"
        assert [d.request_id for d, _ in store.iter_logged()] == ["r1"]
        assert store.get_decision("r2").served_by_fallback and not store.get_decision("r1").served_by_fallback
