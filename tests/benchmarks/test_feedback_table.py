"""benchmarks/feedback_table.py: the issue-4 target check over a replay's per-seed results."""
import importlib.util
import json
from pathlib import Path

import pytest

spec = importlib.util.spec_from_file_location("feedback_table",
                                              Path(__file__).parents[2] / "benchmarks" / "feedback_table.py")
feedback_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(feedback_table)


def write_run(path: Path, seeds: list[int], rows: dict[str, list[list[float]]], **extra) -> str:
    path.mkdir(parents=True)
    agg = {"seeds": seeds, "methods": {m: {"utility": {"per_seed": v}} for m, v in rows.items()}, **extra}
    (path / "bench_feedback_seeds.json").write_text(json.dumps(agg))
    return str(path)


def test_summary_of_an_ungated_run_and_a_gated_run_against_its_baselines(tmp_path):
    static = [[0.5] * 6, [0.6] * 6]
    naive = [[0.5, 0.52, 0.53, 0.53, 0.54, 0.55], [0.6, 0.61, 0.61, 0.62, 0.62, 0.62]]
    ours = [[0.5, 0.51, 0.54, 0.56, 0.57, 0.58], [0.6, 0.62, 0.61, 0.63, 0.64, 0.66]]
    full = [[0.5, 0.55, 0.56, 0.57, 0.58, 0.6], [0.6, 0.64, 0.65, 0.66, 0.67, 0.7]]
    base = write_run(tmp_path / "base", [0, 1], {"static": static, "naive": naive, "ips": ours, "full": full})
    gated = write_run(tmp_path / "gated", [0, 1], {"ips": naive},
                      false_promotions={"ips": 1}, missed_improvements={"ips": 2}, updates={"ips": 10})
    out = tmp_path / "table.json"
    res = feedback_table.main([base, f"gated={gated}:{base}", "--output", str(out)])
    s = res[base]
    assert s["mean_utility"]["ours"] == pytest.approx([0.565, 0.575, 0.595, 0.605, 0.62])
    assert s["mean_rises_every_round"] is True
    assert s["seeds_rising_every_round"] == 1              # seed 1 dips from 0.62 to 0.61
    assert s["seeds_never_falling"] == 1
    assert s["largest_seed_dip"] == pytest.approx(0.01)
    assert s["share_of_gap"] == pytest.approx(0.7)          # mean gain (0.08 + 0.06) / 2 over mean gap 0.1
    d = s["ours_minus_naive"]
    assert d["mean"] == pytest.approx(0.035) and d["seeds_ahead"] == 2 and d["sign_test_p"] == 0.5
    g = res["gated"]
    assert g["ours_minus_naive"]["mean"] == 0 and g["ours_minus_naive"]["seeds_ahead"] == 0
    assert g["ours_minus_naive"]["sign_test_p"] == 1.0    # all ties
    assert g["false_promotions"] == 1 and g["updates"] == 10
    assert g["seeds_rising_every_round"] == 0 and g["seeds_never_falling"] == 2   # naive's level rounds
    assert json.loads(out.read_text())["gated"]["share_of_gap"] == pytest.approx(g["share_of_gap"])


def test_a_run_on_some_of_the_baselines_seeds_is_compared_on_those(tmp_path):
    rows = {"static": [[0.5] * 6, [0.6] * 6], "naive": [[0.5] * 5 + [0.55], [0.6] * 5 + [0.61]],
            "full": [[0.5] * 5 + [0.6], [0.6] * 5 + [0.7]]}
    base = write_run(tmp_path / "base", [3, 7], rows)
    run = write_run(tmp_path / "run", [7], {"ips": [[0.6] * 5 + [0.65]]})
    s = feedback_table.main([f"{run}:{base}"])[run]
    assert s["gap"] == pytest.approx(0.1) and s["share_of_gap"] == pytest.approx(0.5)   # seed 7's rows only
    assert s["ours_minus_naive"]["mean"] == pytest.approx(0.04)


def test_runs_on_different_seeds_pool(tmp_path):
    rows = lambda lo, hi: {"static": [[0.5] * 6], "naive": [[0.5] * 5 + [lo]], "ips": [[0.5] * 5 + [hi]],  # noqa: E731
                           "full": [[0.5] * 5 + [0.7]]}
    a = write_run(tmp_path / "a", [0], rows(0.55, 0.6), false_promotions={"ips": 1}, updates={"ips": 5})
    b = write_run(tmp_path / "b", [1], rows(0.6, 0.58), false_promotions={"ips": 2}, updates={"ips": 5})
    s = feedback_table.main([f"both={a}+{b}"])["both"]
    assert s["seeds"] == [0, 1] and s["ours_minus_naive"]["seeds_ahead"] == 1
    assert s["ours_minus_naive"]["mean"] == pytest.approx((0.05 - 0.02) / 2)
    assert s["false_promotions"] == 3 and s["updates"] == 10
    with pytest.raises(SystemExit, match="share seeds"):
        feedback_table.main([f"{a}+{a}"])


def test_seeds_option_keeps_only_those_seeds(tmp_path):
    rows = {"static": [[0.5] * 6, [0.6] * 6], "naive": [[0.5] * 5 + [0.55], [0.6] * 5 + [0.61]],
            "ips": [[0.5] * 5 + [0.6], [0.6] * 5 + [0.6]], "full": [[0.5] * 5 + [0.6], [0.6] * 5 + [0.7]]}
    base = write_run(tmp_path / "base", [3, 7], rows, false_promotions={"ips": 4})
    s = feedback_table.main([base, "--seeds", "7"])[base]
    assert s["seeds"] == [7] and s["share_of_gap"] == 0.0 and s["false_promotions"] is None
    assert feedback_table.main([base, "--seeds", "3,7"])[base]["share_of_gap"] == pytest.approx(0.5)
    with pytest.raises(SystemExit, match=r"no seeds \[6\]"):
        feedback_table.main([base, "--seeds", "6-7"])


def test_mismatched_seeds_and_a_missing_method_are_named(tmp_path):
    base = write_run(tmp_path / "base", [0, 1], {"static": [[0.5] * 6] * 2})
    other = write_run(tmp_path / "other", [2, 3], {"ips": [[0.5] * 6] * 2})
    with pytest.raises(SystemExit, match=r"seeds \[2, 3\] that"):
        feedback_table.main([f"x={other}:{base}"])
    with pytest.raises(SystemExit, match="no method 'ips'"):
        feedback_table.main([base])
    with pytest.raises(SystemExit, match="not found"):
        feedback_table.main([str(tmp_path / "nowhere")])


def test_sign_test():
    assert feedback_table.sign_test(10, 10) == pytest.approx(2 / 1024)
    assert feedback_table.sign_test(5, 10) == 1.0


def test_pooling_written_rows_equals_pooling_the_runs(tmp_path):
    rng = __import__("numpy").random.default_rng(0)
    runs = []
    for k, seeds in enumerate(([0, 1, 2], [3, 4])):
        rows = {m: (base + rng.normal(0, 0.02, (len(seeds), 6))).tolist()
                for m, base in (("static", 0.5), ("naive", 0.55), ("ips", 0.56), ("full", 0.6))}
        runs.append(write_run(tmp_path / f"r{k}", seeds, rows))
    table = tmp_path / "table.json"
    feedback_table.main([f"a={runs[0]}", f"b={runs[1]}", "--output", str(table)])
    direct = feedback_table.main([f"{runs[0]}+{runs[1]}"])[f"{runs[0]}+{runs[1]}"]
    pooled = feedback_table.main(["--pool", f"ab={table}#a+{table}#b"])["ab"]
    for key in ("share_of_gap", "naive_share_of_gap", "gap", "largest_seed_dip"):
        assert pooled[key] == pytest.approx(direct[key])
    for key in ("mean", "sd", "se", "sign_test_p", "by_round"):
        assert pooled["ours_minus_naive"][key] == pytest.approx(direct["ours_minus_naive"][key])
    for m in ("naive", "ours", "full"):
        assert pooled["mean_utility"][m] == pytest.approx(direct["mean_utility"][m])
    assert pooled["seeds"] == [0, 1, 2, 3, 4] and pooled["mean_rises_every_round"] == direct["mean_rises_every_round"]
    with pytest.raises(SystemExit, match="no row 'c'"):
        feedback_table.main(["--pool", f"x={table}#c"])
    with pytest.raises(SystemExit, match="share seeds"):
        feedback_table.main(["--pool", f"x={table}#a+{table}#a"])
    # row and pool names may hold '=' and '+' (e.g. "Thompson (n = 20) + refit")
    named = tmp_path / "named.json"
    feedback_table.main([f"a (n = 1) + x={runs[0]}", f"b (n = 1) + x={runs[1]}", "--output", str(named)])
    again = feedback_table.main(["--pool", f"ab (n = 1) + x={named}#a (n = 1) + x+{named}#b (n = 1) + x"])
    assert again["ab (n = 1) + x"]["mean_utility"] == pooled["mean_utility"]


def test_full_from_an_earlier_row_gives_the_same_share_of_the_gap(tmp_path):
    rng = __import__("numpy").random.default_rng(1)
    rows = {m: (base + rng.normal(0, 0.02, (3, 6))).tolist()
            for m, base in (("static", 0.5), ("naive", 0.55), ("ips", 0.56), ("full", 0.6))}
    whole = write_run(tmp_path / "whole", [0, 1, 2], rows)
    table = tmp_path / "table.json"
    direct = feedback_table.main([f"w={whole}", "--output", str(table)])["w"]
    # the same replay without its full-information rows (their folders gone), full taken from the table
    part = write_run(tmp_path / "part", [2, 0, 1], {m: [rows[m][i] for i in (2, 0, 1)] for m in ("static", "naive", "ips")})
    s = feedback_table.main([part, "--full-from", f"{table}#w"])[part]
    for key in ("share_of_gap", "naive_share_of_gap", "gap"):
        assert s[key] == pytest.approx(direct[key])
    assert s["mean_utility"]["full"] == pytest.approx(direct["mean_utility"]["full"])
    assert s["ours_minus_naive"]["se"] == pytest.approx(direct["ours_minus_naive"]["se"])
    other = write_run(tmp_path / "other", [5], {m: [rows[m][0]] for m in ("static", "naive", "ips")})
    with pytest.raises(SystemExit, match="take it from a row on the same seeds"):
        feedback_table.main([other, "--full-from", f"{table}#w"])
