import json
from pathlib import Path
import math

import numpy as np
import pytest

from neural_router.data.dataset import DataConfig, DataError, RoutingDataset, load_routing_data, unwrap_text
from neural_router.pool import ModelPool

from tests.conftest import SHARED_DATA, TINY_POOL


@pytest.fixture
def pool():
    return ModelPool.model_validate(TINY_POOL)


def write_csv(path, header, rows):
    import csv

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_wide_format_scores_costs_and_response_lengths(tmp_path, pool):
    f = write_csv(tmp_path / "bench_train.csv",
                  ["prompt", "eval_name", "big", "small", "big|total_cost", "small|total_cost", "big|model_response"],
                  [["['What is 2+2?']", "arith", "1.0", "0.0", "0.001", "0.0001", "['four, of course']"],
                   ["Name a colour", "colours", "1", "", "0.002", "", "red"]])
    ds = load_routing_data([str(f)], pool)
    assert ds.models == ["big", "small"]  # pool order, only observed models
    assert ds.prompts[0] == "What is 2+2?"  # RouterBench list repr unwrapped
    assert ds.sources == ["arith", "colours"]
    assert ds.scores[0].tolist() == [1.0, 0.0]
    assert math.isnan(ds.scores[1, 1])  # empty = unobserved, never 0
    assert ds.cost_usd[1, 0] == pytest.approx(0.002)
    assert ds.output_tokens[0, 0] == math.ceil(len("four, of course") / 4)


def test_routerdc_json_source_from_filename_and_graded(tmp_path, pool):
    f = tmp_path / "gsm8k_train.json"
    f.write_text(json.dumps([{"question": "q1", "scores": {"big": 0.9, "mid": 0.25}},
                             {"question": "q2", "scores": {"big": 1, "mid": 0}}]))
    ds = load_routing_data([str(f)], pool)
    assert ds.sources == ["gsm8k", "gsm8k"]
    assert ds.binary_models().tolist() == [False, False]
    assert ds.scores[0, 1] == pytest.approx(0.25)


def test_long_format_merges_duplicates_and_aliases(tmp_path, pool):
    f = tmp_path / "log.jsonl"
    rows = [{"prompt": "hi", "model": "big-alias", "score": 1.0, "latency_ms": 100},
            {"prompt": "hi", "model": "big", "score": 0.0, "latency_ms": 300},
            {"prompt": "yo", "model": "mid", "score": 1.0, "cost_usd": 0.01}]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_routing_data([str(f)], pool)
    assert len(ds) == 2
    i = ds.prompts.index("hi")
    assert ds.scores[i, ds.models.index("big")] == pytest.approx(0.5)
    assert ds.latency_ms[i, ds.models.index("big")] == pytest.approx(200)
    assert np.isnan(ds.scores[i, ds.models.index("mid")])


def test_folder_combines_pools_with_masks(tmp_path, pool):
    write_csv(tmp_path / "a.csv", ["prompt", "big"], [["p1", "1"], ["shared", "0"]])
    (tmp_path / "b.json").write_text(json.dumps([{"question": "shared", "scores": {"small": 1}}]))
    ds = load_routing_data([str(tmp_path)], pool)
    assert set(ds.prompts) == {"p1", "shared"}
    j = ds.prompts.index("shared")
    assert ds.mask[j].tolist() == [True, True]
    assert ds.mask[ds.prompts.index("p1")].tolist() == [True, False]


@pytest.mark.parametrize("rows, expect", [
    ([["p", "abc"]], "row 1, column 'big': score 'abc' is not a number"),
    ([["p", "1"], ["q", "1.5"]], "row 2, column 'big': score 1.5 is outside the configured range"),
    ([["", "1"]], "row 1, column 'prompt': prompt is empty"),
])
def test_bad_values_name_file_row_and_column(tmp_path, pool, rows, expect):
    f = write_csv(tmp_path / "bad.csv", ["prompt", "big"], rows)
    with pytest.raises(DataError) as e:
        load_routing_data([str(f)], pool)
    assert str(f) in str(e.value) and expect in str(e.value)


def test_unknown_model_and_misnamed_columns(tmp_path, pool):
    f = write_csv(tmp_path / "u.csv", ["prompt", "gpt-9"], [["p", "1"]])
    with pytest.raises(DataError, match="model 'gpt-9' is not in the pool") as e:
        load_routing_data([str(f)], pool)
    assert "no model score columns" in str(e.value)  # and what that leaves, in the same error
    ok = write_csv(tmp_path / "ok.csv", ["prompt", "big", "oops"], [["p", "1", "1"]])
    with pytest.raises(DataError) as e:   # every file's problems together, not only the first file's
        load_routing_data([str(f), str(ok)], pool)
    assert "gpt-9" in str(e.value) and "'oops'" in str(e.value) and "3 problems" in str(e.value)
    with pytest.raises(DataError, match="no model score columns"):
        load_routing_data([str(f)], pool, DataConfig(unknown_models="skip"))
    g = write_csv(tmp_path / "m.csv", ["text", "big"], [["p", "1"]])
    with pytest.raises(DataError, match="cannot tell the format"):
        load_routing_data([str(g)], pool)


def test_skip_mode_counts_and_keeps_good_rows(tmp_path, pool, caplog):
    f = write_csv(tmp_path / "s.csv", ["prompt", "big", "gpt-9"], [["p", "1", "1"], ["q", "x", "0"], ["r", "0", "1"]])
    ds = load_routing_data([str(f)], pool, DataConfig(on_error="skip", unknown_models="skip"))
    assert ds.prompts == ["p", "r"]
    assert "skipped" in caplog.text


def test_a_folder_of_source_folders_reads_them_all(tmp_path, pool):
    write_csv(tmp_path / "bench" / "a.csv", ["prompt", "big"], [["p1", "1"], ["shared", "0"]])
    (tmp_path / "dc").mkdir()
    (tmp_path / "dc" / "gsm8k_train.json").write_text(json.dumps([{"question": "shared", "scores": {"small": 1}}]))
    (tmp_path / "README.md").write_text("not data")
    write_csv(tmp_path / ".cache" / "old.csv", ["prompt", "big"], [["hidden", "1"]])   # skipped
    ds = load_routing_data([str(tmp_path)], pool)
    both = load_routing_data([str(tmp_path / "bench"), str(tmp_path / "dc")], pool)
    assert sorted(ds.prompts) == sorted(both.prompts) == ["p1", "shared"]
    assert ds.mask[ds.prompts.index("shared")].tolist() == [True, True]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="nor do its subfolders"):
        load_routing_data([str(tmp_path / "empty")], pool)


def test_missing_path_errors(pool):
    with pytest.raises(DataError, match="no such file or folder"):
        load_routing_data(["./nope/missing.csv"], pool)


def test_split_is_deterministic_and_salted():
    n = 400
    ds = RoutingDataset([f"prompt {i}" for i in range(n)], ["a"], np.ones((n, 1), np.float32),
                        *(np.full((n, 1), np.nan, np.float32) for _ in range(3)))
    tr1, va1 = ds.split(0.2)
    tr2, va2 = ds.split(0.2)
    assert va1.prompts == va2.prompts and 40 < len(va1) < 120
    assert set(tr1.prompts).isdisjoint(va1.prompts)
    _, va3 = ds.split(0.2, salt="other")
    assert va3.prompts != va1.prompts


def test_unwrap_text():
    assert unwrap_text("['a', 'b']") == "a\nb"
    assert unwrap_text("[not a list") == "[not a list"


@pytest.mark.integration
def test_real_shared_data_both_sources():
    pool = ModelPool.from_yaml("configs/models.yaml")
    ds = load_routing_data([str(SHARED_DATA / "routerbench"), str(SHARED_DATA / "routerdc7")], pool)
    assert len(ds.models) == 18
    assert len(ds) > 9000
    rb = ds.select_models(ds.models[:11])
    assert len(rb) == 2225 and 0 < np.isnan(rb.scores).mean() < 0.02  # ~1% missing outcomes
    assert np.isfinite(rb.cost_usd).mean() > 0.9


def test_every_bad_row_is_named_in_one_error_and_nothing_is_loaded(tmp_path, pool):
    """A file with several problems is reported whole (file, row, column of each), not one per run."""
    rows = [["", "big", "1"], ["p", "gpt-9", "1"], ["q", "big", "abc"], ["r", "big", "0.5"], ["s", "big", "7"]]
    f = write_csv(tmp_path / "long.csv", ["prompt", "model", "score"], rows)
    with pytest.raises(DataError) as e:
        load_routing_data([str(f)], pool)
    msg = str(e.value)
    assert msg.startswith("4 problems in the data, nothing was loaded")
    for where in ("row 1, column 'prompt'", "row 2, column 'model'", "row 3, column 'score'", "row 5, column 'score'"):
        assert f"{f}, {where}" in msg, msg
    assert "row 4" not in msg and "data.on_error: skip" in msg
    many = write_csv(tmp_path / "many.csv", ["prompt", "model", "score"], [[f"p{i}", "big", "x"] for i in range(30)])
    with pytest.raises(DataError, match=r"30 problems in the data(.|\n)*\.\.\. and 10 more"):
        load_routing_data([str(many)], pool)


def test_unreadable_files_name_the_line(tmp_path, pool):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("prompt,big\nfoo,1\nbar,0,extra\nbaz,1\n")
    with pytest.raises(DataError, match=r"ragged.csv: 1 row\(s\) do not have the header's 2 fields \(line 3: 3 fields\)"):
        load_routing_data([str(ragged)], pool)
    open_quote = tmp_path / "quote.csv"
    open_quote.write_text('prompt,big\nfoo,1\n"bar,0\nbaz,1\n')
    with pytest.raises(DataError, match=r"quote.csv: .*line 3-4: 1 fields.*quote fields"):
        load_routing_data([str(open_quote)], pool)
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"prompt": "p", "model": "big", "score": 1}\n{"prompt": "q", "model": big}\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: not valid JSON"):
        load_routing_data([str(jl)], pool)
