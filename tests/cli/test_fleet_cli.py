"""`neural-router promote` and `neural-router rollback` write the router registry of a store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neural_router.cli import main
from neural_router.feedback.registry import RouterRegistry


def router_folder(root: Path, version: str) -> Path:
    d = root / version
    d.mkdir(parents=True)
    (d / "router_config.json").write_text(json.dumps({"version": version}))
    return d


def test_promote_and_rollback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    v1, v2 = router_folder(tmp_path, "v1"), router_folder(tmp_path, "v2")
    assert main(["promote", "--router", str(v1), "--store", url, "--by", "alice"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["version"], printed["action"], printed["promoted_by"]) == ("v1", "promote", "alice")
    assert main(["rollback", "--store", url]) == 2
    assert "only version in the registry" in capsys.readouterr().err
    (v2 / "promotion.json").write_text(json.dumps({"promote": False, "reason": "no gain"}))
    assert main(["promote", "--router", str(v2), "--store", url]) == 0
    assert "advised against promoting it (no gain); promoted anyway" in capsys.readouterr().err
    assert main(["rollback", "--store", url, "--by", "bob"]) == 0
    with RouterRegistry.from_url(url) as reg:
        assert [(e.version, e.action) for e in reg.history(3)] == [("v1", "rollback"), ("v2", "promote"),
                                                                  ("v1", "promote")]
        assert reg.current().promoted_by == "bob"


def test_bad_folder_and_store_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["promote", "--router", str(tmp_path / "nope"), "--store", str(tmp_path / "f.db")]) == 2
    err = capsys.readouterr().err
    assert "neural-router promote: error: router folder" in err and "does not exist" in err
    assert main(["rollback", "--store", str(tmp_path)]) == 2
    assert "is a folder; give the SQLite file" in capsys.readouterr().err
