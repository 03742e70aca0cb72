"""run_update end to end on the tiny router: a first update that adds a pool member (fine-tuned), a
second that chains from it (the default head refit, with head transfer), a third that keeps training
a candidate that was not promoted; and the errors it gives before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from neural_router.cli import build_parser, update_from_args
from neural_router.feedback.store import FeedbackStore
from neural_router.inference.predictors import RouterLoadError
from neural_router.modeling.model import RouterModel
from neural_router.training.update import run_update

from tests.training.helpers import log_traffic


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_trained_dir, tiny_pool_file):
    """The folders and results of the updates so far (filled by the fixtures below)."""
    root = tmp_path_factory.mktemp("updates")
    url = f"sqlite:///{root / 'fb.db'}"
    with FeedbackStore.from_url(url) as store:
        log_traffic(store, tiny_trained_dir, 120, 0.5)
    pool = yaml.safe_load(tiny_pool_file.read_text())
    pool["models"].append({"name": "newbie", "input_price_per_1m": 0.5, "output_price_per_1m": 1.0})
    (root / "pool.yaml").write_text(yaml.safe_dump(pool))
    return {"root": root, "url": url, "pool": root / "pool.yaml",
            "parent_version": json.loads((tiny_trained_dir / "router_config.json").read_text())["version"]}


@pytest.fixture(scope="module")
def first(chain, tiny_trained_dir):
    """A fine-tuning update that adds 'newbie' to the pool."""
    res = run_update(tiny_trained_dir, chain["url"], chain["root"] / "routers", preferences={"cost_weight": 0.3},
                     pool_file=chain["pool"], overrides={"epochs": 2}, n_boot=100, head_refit=None)
    out = Path(res["router_dir"])
    return res, out, json.loads((out / "training_metrics.json").read_text()), \
        json.loads((out / "promotion.json").read_text())


@pytest.fixture(scope="module")
def second(chain, first):
    """A default update (head refit) chained from the first, through the command line's options."""
    with FeedbackStore.from_url(chain["url"]) as store:
        log_traffic(store, first[1], 30, 0.5, seed=2)
    res = update_from_args(build_parser().parse_args([
        "update", "--router", str(first[1]), "--feedback", chain["url"], "--output", str(chain["root"] / "routers"),
        "--min-improvement", "1e9", "--epochs", "1", "--cost-weight", "0.3", "--head-transfer", "5",
        "--head-transfer-models", "newbie"]))
    out = Path(res["router_dir"])
    return res, out, json.loads((out / "training_metrics.json").read_text()), \
        json.loads((out / "promotion.json").read_text())


def test_first_update_writes_a_new_version_with_the_new_member(chain, first):
    res, out, tm, _ = first
    assert out == chain["root"] / "routers" / res["version"]
    assert res["version"].startswith(chain["parent_version"].split("+")[0] + "+")
    assert res["parent_version"] == chain["parent_version"] and res["new_models"] == ["newbie"]
    assert res["n_logged"] == 120 and res["n_logged_train"] + res["n_logged_val"] + res["n_holdout"] == 120
    assert res["n_logged_val"] > 0 and 15 < res["n_holdout"] < 60 and res["n_original"] > 0
    rc = json.loads((out / "router_config.json").read_text())
    assert rc["models"] == ["big", "mid", "small", "newbie"] and rc["version"] == res["version"]
    assert tm["parent_version"] == chain["parent_version"] and tm["data"]          # original data carried on
    assert {"model.safetensors", "models.yaml", "README.md", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}


def test_first_update_records_its_settings(first):
    _, _, tm, _ = first
    u = tm["update"]
    assert u["normalize_weights"] is True and u["bias_calibration"] is None   # the defaults
    # head transfer is on by default for the new model, but with no outcome of it yet its row stays
    # at the cold-start prior
    assert u["head_transfer"] == 20.0 and u["head_transfer_models"] == ["newbie"]
    assert not tm["history"][-1].get("head_transfer")
    assert u["weights_of_chosen"]["max"] > 1.0 and u["head_refit"] is None and u["interpolate"] == 0.5
    rows = u["row_interpolate"]   # >= 0.5; more where the parent saw few of the outcomes
    assert set(rows) == {"big", "mid", "small", "newbie"} and all(0.5 <= a <= 1 for a in rows.values())
    assert rows["newbie"] == 0.5                                       # no outcomes: the base share
    assert tm["summary"]["observed_per_model"]["newbie"] == 0


def test_first_update_promotion_check(first):
    res, out, _, promo = first
    assert promo["n"] == res["n_holdout"] and isinstance(promo["promote"], bool)
    for who in ("current", "new"):
        for m in ("ips", "snips", "dr"):
            e = promo[who][m]
            assert e["ci_low"] <= e["value"] <= e["ci_high"] and e["n"] == promo["n"]
    d = promo["difference"]
    assert promo["promote"] == (d["dm"]["value"] > 0)               # the default: the direct method decides
    by_clip = promo["dr_difference_by_clip"]                        # the verdict's sensitivity
    assert set(by_clip) == {"0", "1", "3", "10", "30"} and all(np.isfinite(list(by_clip.values())))
    assert promo["preferences"]["cost_weight"] == 0.3
    rm = promo["reward_model"]   # calibrated on the logs the update trained on (the default)
    assert rm["calibration"] == 10.0 and rm["n_calibration"] == res["n_logged"] - res["n_holdout"]
    assert set(rm["quality_shift"]) == {"big", "mid", "small", "newbie"}


def test_first_update_card_and_router(first):
    from neural_router import Router

    _, out, tm, promo = first
    card = (out / "README.md").read_text()   # where the version came from and its verdict
    assert f"updated from version `{tm['parent_version']}`" in card and "## Promotion check" in card
    assert promo["reason"] in card and "inf" not in card
    r = Router.from_pretrained(out)
    assert r.models == ["big", "mid", "small", "newbie"]
    q = r.predict(["math question 5: integral derivative solve prime"]).quality
    assert q.shape == (1, 4) and 0 < q[0, 3] < 1


def test_second_update_chains_and_refits_only_the_quality_head(chain, first, second):
    res, out, tm, promo = second
    assert res["parent_version"] == first[0]["version"] and res["promote"] is False
    assert "(not above min_improvement 1e+09)" in promo["reason"]
    assert promo["min_improvement"] == 1e9 and promo["preferences"]["cost_weight"] == 0.3
    assert promo["current_version"] == promo["trained_from"] == first[0]["version"]   # the default
    assert tm["lineage"] == [chain["parent_version"], first[0]["version"]]
    assert tm["update"]["head_refit"] == 30.0 and tm["update"]["interpolate"] == 1.0
    assert tm["history"][0]["head_refit"]["observed"] > 0
    w1, w2 = (RouterModel.from_pretrained(d).state_dict() for d in (first[1], out))
    assert sorted(k for k in w1 if not torch.equal(w1[k], w2[k])) == ["quality.bias", "quality.weight"]


def test_second_update_transfers_the_new_members_head(second):
    _, _, tm, _ = second
    assert tm["update"]["head_transfer"] == 5.0 and tm["update"]["head_transfer_models"] == ["newbie"]
    mix = tm["history"][-1]["head_transfer"]["newbie"]
    assert mix["n"] == tm["summary"]["observed_per_model"]["newbie"] > 0
    assert set(mix["weights"]) == {"big", "mid", "small"}


def test_a_candidate_keeps_training_while_the_check_compares_with_what_serves(chain, first, second, capsys):
    """The second candidate was not promoted: a third update (the command) trains it further while
    the check still compares with the router that serves (the first update)."""
    from neural_router.cli import main

    assert main(["update", "--router", str(second[1]), "--compare-with", str(first[1]), "--feedback", chain["url"],
                 "--output", str(chain["root"] / "routers"), "--epochs", "1", "--cost-weight", "0.3",
                 "--head-transfer", "5"]) == 0
    res = json.loads(capsys.readouterr().out)
    promo = json.loads((Path(res["router_dir"]) / "promotion.json").read_text())
    assert res["parent_version"] == second[0]["version"]
    assert promo["current_version"] == first[0]["version"] and promo["trained_from"] == second[0]["version"]
    assert promo["n"] > 0 and "dr" in promo["difference"]       # the serving router was predicted
    tm = json.loads((Path(res["router_dir"]) / "training_metrics.json").read_text())
    assert tm["update"]["head_transfer_models"] == ["newbie"]   # inherited from the parent's update


def test_run_update_store_and_folder_errors(tiny_trained_dir, tmp_path):
    with pytest.raises(ValueError, match="empty.db does not exist"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out")
    assert not (tmp_path / "empty.db").exists()
    FeedbackStore.from_url(tmp_path / "empty.db").close()
    with pytest.raises(ValueError, match="no logged outcomes"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out")
    with pytest.raises(RouterLoadError, match="model.safetensors is missing"):
        run_update(tmp_path, tmp_path / "empty.db", tmp_path / "out")
    with pytest.raises(RouterLoadError, match="compare_with: .* model.safetensors is missing"):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", compare_with=tmp_path)
    with pytest.raises(RouterLoadError, match="nope does not exist"):
        run_update(tmp_path / "nope", tmp_path / "empty.db", tmp_path / "out")
    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(tiny_trained_dir, no_tok)
    for f in no_tok.glob("tokenizer.json"):
        f.unlink()
    with pytest.raises(RouterLoadError, match="the tokenizer's vocabulary is missing"):
        run_update(no_tok, tmp_path / "empty.db", tmp_path / "out")
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "router.onnx").write_bytes(b"")
    with pytest.raises(RouterLoadError, match="is an ONNX export, not a trained router folder"):
        run_update(tmp_path / "onnx", tmp_path / "empty.db", tmp_path / "out")


@pytest.mark.parametrize("kw, message", [
    ({"holdout_fraction": 1.0}, r"holdout_fraction: Input should be less than 1 \(got 1.0\)"),
    ({"log_val_fraction": 1.0}, r"log_val_fraction: Input should be less than 1"),
    ({"promote_on": "ips,foo"}, r"promote_on: 'ips,foo' must name one or more of ips, snips, dr, dm"),
    ({"interpolate": 1.5}, r"interpolate: Input should be less than or equal to 1"),
    ({"head_transfer": -5}, r"head_transfer: Input should be greater than or equal to 0"),
    ({"reward_calibration": -1}, r"reward_calibration: Input should be greater than or equal to 0"),
    ({"head_refit": 0}, r"head_refit: Input should be greater than 0"),
    ({"head_transfer": 5, "head_transfer_models": ("nobody",)}, "head_transfer_models: 'nobody' not in the router's pool"),
    ({"head_transfer": 0, "head_transfer_models": ("mid",)}, "head_transfer .* is not set"),
    ({"bogus": 1}, r"bogus: Extra inputs are not permitted"),
])
def test_run_update_refuses_bad_settings_before_any_work(tiny_trained_dir, tmp_path, kw, message):
    FeedbackStore.from_url(tmp_path / "empty.db").close()   # no logs: a settings error must come first
    with pytest.raises(ValueError, match=message):
        run_update(tiny_trained_dir, tmp_path / "empty.db", tmp_path / "out", **kw)
    assert not (tmp_path / "out").exists()


def test_publish_records_only_a_promoted_update_in_the_registry(chain, first, tmp_path):
    """--publish: a promoted update becomes the registry's current router; a refused one does not."""
    from neural_router.feedback.registry import RouterRegistry

    refused = run_update(first[1], chain["url"], tmp_path / "a", min_improvement=1e9, n_boot=50, publish=True)
    assert not refused["promote"]
    with RouterRegistry.from_url(chain["url"]) as registry:
        assert registry.current() is None
    res = run_update(first[1], chain["url"], tmp_path / "b", min_improvement=-1e9, n_boot=50, publish=True)
    assert res["promote"]
    with RouterRegistry.from_url(chain["url"]) as registry:
        entry = registry.current()
    assert entry.version == res["version"] and entry.action == "promote"
    assert Path(entry.folder) == Path(res["router_dir"]).resolve() and entry.promoted_by == "neural-router update"
    assert entry.evidence["promotion"]["promote"] is True
