"""benchmarks/routing_signal.py: can the text tell which of a benchmark's two best models wins?"""
import importlib.util
import json
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("routing_signal",
                                              Path(__file__).parents[2] / "benchmarks" / "routing_signal.py")
routing_signal = importlib.util.module_from_spec(spec)
spec.loader.exec_module(routing_signal)


def synthetic(n: int, rng, signal: float):
    """Three models; which of the first two wins depends on the embedding's first coordinate."""
    e = rng.normal(size=(n, 8))
    difficulty = rng.normal(size=n)
    wins_a = (signal * e[:, 0] + rng.normal(size=n)) > 0
    s = np.stack([0.6 + 0.3 * (wins_a - 0.5), 0.6 - 0.3 * (wins_a - 0.5), np.full(n, 0.2)], 1)
    s = np.clip(s + 0.1 * difficulty[:, None], 0, 1)
    return e, s


def test_ridge_finds_a_real_difference_and_a_router_that_only_knows_difficulty_does_not():
    rng = np.random.default_rng(0)
    e_tr, s_tr = synthetic(400, rng, signal=3.0)
    e_va, s_va = synthetic(200, rng, signal=3.0)
    s_tr[::7, 2] = np.nan   # unobserved pairs are skipped, never read as 0
    q_difficulty = s_va.mean(1, keepdims=True) + np.array([0.1, 0.0, -0.3])   # same shift for A and B
    r = routing_signal.benchmark_signal(s_tr, s_va, q_difficulty, e_tr, e_va, ["a", "b", "c"])
    assert {r["model_a"], r["model_b"]} == {"a", "b"}
    assert r["ridge_corr"] > 0.6 and r["ridge_top2_gain"] > 0.05
    assert np.isnan(r["router_corr"])            # a constant predicted difference carries no signal
    assert r["difficulty_corr"] > 0.3            # ... though it tracks every model's score
    assert abs(r["router_top2_gain"]) < 1e-12    # always picks A, the better one on average


def test_no_signal_gives_no_ridge_gain():
    rng = np.random.default_rng(1)
    e_tr, s_tr = synthetic(400, rng, signal=0.0)
    e_va, s_va = synthetic(300, rng, signal=0.0)
    r = routing_signal.benchmark_signal(s_tr, s_va, s_va.copy(), e_tr, e_va, ["a", "b", "c"])
    assert abs(r["ridge_corr"]) < 0.2
    assert r["router_corr"] > 0.99               # an oracle router's differences are the observed ones
    assert r["router_top2_gain"] > 0.1


def test_main_on_a_trained_router_writes_one_row_per_benchmark(tiny_trained_dir, tmp_path, capsys):
    out = tmp_path / "signal.json"
    rep = routing_signal.main(["--router", str(tiny_trained_dir), "--min-prompts", "3", "--output", str(out)])
    saved = json.loads(out.read_text())
    assert saved["routers"][0]["benchmarks"] == json.loads(json.dumps(rep["routers"][0]["benchmarks"]))
    rows = saved["routers"][0]["benchmarks"]
    assert set(rows) == {"math", "code", "chat"}
    for r in rows.values():
        assert r["model_a"] != r["model_b"] and r["n_val"] >= 3 and -1 <= r["quality_only_gain"] <= 1
    assert "router corr" in capsys.readouterr().out
