"""The router registry on SQLite: entries, the current router, history, rollback, and clear errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect

from neural_router.feedback.registry import (NoPreviousRouterError, RegistryError, RouterRegistry,
                                             folder_version, promote_folder, rollback_registry)
from neural_router.feedback.store import FeedbackStore, StoreUnavailableError


@pytest.fixture
def registry(tmp_path: Path):
    r = RouterRegistry.from_url(tmp_path / "db" / "feedback.db")
    yield r
    r.close()


def test_record_current_and_history(registry: RouterRegistry, tmp_path: Path) -> None:
    assert registry.current() is None
    first = registry.record("v1", tmp_path / "v1", "promote", "alice", {"promote": True, "gain": float("inf")})
    second = registry.record("v2", "relative/v2", "reload", "admin@replica-a")
    assert second.id > first.id
    current = registry.current()
    assert current == second and current.version == "v2" and current.action == "reload"
    assert Path(current.folder).is_absolute() and current.folder.endswith("relative/v2")
    assert current.promoted_at.tzinfo is not None and current.promoted_at >= first.promoted_at
    assert [e.version for e in registry.history(10)] == ["v2", "v1"]
    assert registry.history(1) == [second]
    assert registry.history(10)[1].evidence == {"promote": True, "gain": "Infinity"}  # JSON-safe


def test_rollback_goes_to_the_previous_distinct_version_and_back(registry: RouterRegistry) -> None:
    with pytest.raises(NoPreviousRouterError, match="empty"):
        registry.rollback("ops")
    registry.record("v1", "/r/v1", "promote", "ops")
    registry.record("v1", "/r/v1", "reload", "admin@a")     # the same version again is no "previous"
    with pytest.raises(NoPreviousRouterError, match="only version"):
        registry.rollback("ops")
    registry.record("v2", "/r/v2", "promote", "update")
    back = registry.rollback("ops")
    assert (back.version, back.folder, back.action, back.promoted_by) == ("v1", "/r/v1", "rollback", "ops")
    assert back.evidence["rolled_back_to_entry"] == 2        # the latest v1 entry
    assert registry.current() == back
    again = registry.rollback("ops")                         # like /admin/rollback: swaps the two
    assert again.version == "v2"
    assert [e.action for e in registry.history(5)] == ["rollback", "rollback", "promote", "reload", "promote"]


def test_bad_entries_are_refused(registry: RouterRegistry) -> None:
    with pytest.raises(RegistryError, match="action 'deploy' is not one of promote, reload, rollback"):
        registry.record("v1", "/r", "deploy", "ops")
    with pytest.raises(RegistryError, match="version"):
        registry.record("  ", "/r", "promote", "ops")
    with pytest.raises(RegistryError, match="promoted_by"):
        registry.record("v1", "/r", "promote", " ")
    with pytest.raises(RegistryError, match="JSON object"):
        registry.record("v1", "/r", "promote", "ops", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="n >= 1"):
        registry.history(0)
    assert registry.current() is None                         # nothing was written


def test_shares_the_feedback_database_without_clashing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'feedback.db'}"
    with FeedbackStore.from_url(url) as store:
        with RouterRegistry.from_url(url) as reg:
            reg.record("v1", "/r/v1", "promote", "ops")
        tables = set(inspect(store.engine).get_table_names())
    assert {"decisions", "outcomes", "router_registry"} <= tables
    with FeedbackStore.from_url(url, must_exist=True), RouterRegistry.from_url(url) as again:
        assert again.current() is not None and again.current().version == "v1"
    alone = tmp_path / "registry-only.db"
    with RouterRegistry.from_url(alone) as reg:                # no feedback store tables are created
        assert set(inspect(reg.engine).get_table_names()) == {"router_registry"}


def test_concurrent_writers_get_distinct_increasing_ids(registry: RouterRegistry) -> None:
    ids: list[int] = []

    def write(i: int) -> None:
        ids.append(registry.record(f"v{i}", f"/r/{i}", "promote", "ops").id)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(ids) == list(range(1, 9))
    assert registry.current().id == 8


def test_a_bad_url_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match="is a folder; give the SQLite file"):
        RouterRegistry.from_url(tmp_path)
    with pytest.raises(StoreUnavailableError, match="this kind of database cannot be used"):
        RouterRegistry.from_url("nosuchdb://x/y")
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("hello, this is not SQLite" * 100)
    with pytest.raises(StoreUnavailableError, match="cannot open the router registry .*notes.txt"):
        RouterRegistry.from_url(not_a_db)
    with pytest.raises(StoreUnavailableError, match="cannot open the router registry .*127.0.0.1:1") as e:
        RouterRegistry.from_url("postgresql://nobody:secret@127.0.0.1:1/db")
    assert "secret" not in str(e.value)


def test_folder_version(tmp_path: Path) -> None:
    d = tmp_path / "router"
    with pytest.raises(RegistryError, match="does not exist"):
        folder_version(d)
    d.mkdir()
    with pytest.raises(RegistryError, match="no router_config.json"):
        folder_version(d)
    (d / "router_config.json").write_text("{not json")
    with pytest.raises(RegistryError, match="cannot be read"):
        folder_version(d)
    (d / "router_config.json").write_text(json.dumps({"version": ""}))
    with pytest.raises(RegistryError, match="names no version"):
        folder_version(d)
    (d / "router_config.json").write_text(json.dumps({"version": "abc123", "models": ["a"]}))
    assert folder_version(d) == "abc123"


def test_promote_folder_reads_version_and_verdict(tmp_path: Path) -> None:
    d = tmp_path / "routers" / "v7"
    d.mkdir(parents=True)
    (d / "router_config.json").write_text(json.dumps({"version": "v7"}))
    (d / "promotion.json").write_text(json.dumps({"promote": True, "reason": "dm gain 0.02"}))
    url = tmp_path / "feedback.db"
    entry = promote_folder(d, url, "update")
    assert (entry.version, entry.folder, entry.action) == ("v7", str(d.resolve()), "promote")
    assert entry.evidence == {"promotion": {"promote": True, "reason": "dm gain 0.02"}}
    with FeedbackStore.from_url(url) as store:    # an open store's engine works too, and stays open
        again = promote_folder(d, store.engine, "update", evidence={"note": "again"})
        assert again.evidence == {"note": "again"} and again.id == entry.id + 1
        assert "decisions" in inspect(store.engine).get_table_names()
    with pytest.raises(NoPreviousRouterError):
        rollback_registry(url, "ops")
    (d / "promotion.json").write_text("{broken")
    with pytest.raises(RegistryError, match="promotion.json cannot be read"):
        promote_folder(d, url, "update")
