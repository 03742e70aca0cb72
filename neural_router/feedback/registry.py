"""The router registry: which router version the fleet serves, as rows in the shared store database.

Every replica of the service reads the same database as its feedback store (``feedback_url``), so
that database is also where the fleet agrees on a router: each promotion, reload or rollback appends
one row (version, folder, action, when, by whom, evidence) to the ``router_registry`` table, and the
*latest* row is the router every replica should serve (:meth:`RouterRegistry.current`). Rows are
never updated or deleted, so the table is also the audit trail of what served when.

The table lives in its own SQLAlchemy metadata: opening a registry never creates the feedback
store's tables, and the feedback store never touches this one; a database holding only the
registry is fine. Any URL :func:`neural_router.feedback.store.open_engine` accepts works (SQLite
file or path, PostgreSQL).

Methods are synchronous (blocking I/O); an async service calls them in a worker thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

from sqlalchemy import (CheckConstraint, Column, DateTime, Engine, Integer, MetaData, String, Table,
                        select)
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import JSON

from neural_router.feedback.store import StoreUnavailableError, _utc, open_engine, unavailable

Action = Literal["promote", "reload", "rollback"]
ACTIONS: tuple[str, ...] = get_args(Action)
TABLE = "router_registry"
ROUTER_CONFIG = "router_config.json"   # where a router folder keeps its version


class RegistryError(ValueError):
    """A registry entry that cannot be recorded (bad action, empty version, evidence not JSON...)."""


class NoPreviousRouterError(RegistryError, LookupError):
    """A rollback was asked for but the registry holds no earlier, different version."""


@dataclass(frozen=True)
class RegistryEntry:
    """One row of the registry: ``action`` made ``version`` (in ``folder``) the router to serve."""

    id: int                    # increasing: the entry with the largest id is the current one
    version: str
    folder: str                # absolute path; every replica must see the folder at this path
    action: str                # one of ACTIONS
    promoted_at: datetime      # UTC
    promoted_by: str
    evidence: dict[str, Any] = field(default_factory=dict)   # e.g. the update's promotion.json


def _table(metadata: MetaData) -> Table:
    return Table(
        TABLE, metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("version", String(256), nullable=False, index=True),
        Column("folder", String(4096), nullable=False),
        Column("action", String(16), nullable=False),
        Column("promoted_at", DateTime(timezone=True), nullable=False),
        Column("promoted_by", String(256), nullable=False),
        Column("evidence", JSON, nullable=False),
        CheckConstraint("action IN ('promote', 'reload', 'rollback')", name="ck_router_registry_action"),
    )


def folder_version(folder: str | Path) -> str:
    """The version of the router folder ``folder``, read from its ``router_config.json`` (without
    loading the router). :class:`RegistryError` naming the folder when it is not a router folder."""
    d = Path(folder).expanduser()
    config = d / ROUTER_CONFIG
    if not d.is_dir():
        raise RegistryError(f"router folder {d} does not exist (or is not a folder); give the folder "
                            "`neural-router export` (or train/update) wrote")
    try:
        version = json.loads(config.read_text(encoding="utf-8")).get("version")
    except FileNotFoundError:
        raise RegistryError(f"{d} is not a router folder: it has no {ROUTER_CONFIG}") from None
    except (OSError, ValueError, AttributeError) as e:
        raise RegistryError(f"{config} cannot be read as a router config ({e}); copy the folder again") from None
    if not isinstance(version, str) or not version.strip():
        raise RegistryError(f"{config} names no version (a non-empty string \"version\")")
    return version


class RouterRegistry:
    """The ``router_registry`` table of a store database. Safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.metadata = MetaData()
        self.table = _table(self.metadata)
        self.metadata.create_all(engine)

    @classmethod
    def from_url(cls, url: str | Path) -> "RouterRegistry":
        """Open (and create the table of) the registry in the database at ``url``, a feedback store
        URL (``sqlite:///path.db``, a plain path, ``postgresql://user:pw@host:5432/db``).
        :class:`~neural_router.feedback.store.StoreUnavailableError` when it cannot be opened."""
        engine = open_engine(url)
        try:
            return cls(engine)
        except SQLAlchemyError as e:
            engine.dispose()
            raise unavailable(url, e, "the router registry") from None

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "RouterRegistry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ---------------------------------------------------------------------------------

    def record(self, version: str, folder: str | Path, action: str, by: str,
               evidence: dict[str, Any] | None = None) -> RegistryEntry:
        """Append an entry: from now on ``version`` (in ``folder``, stored as an absolute path) is the
        router to serve. ``by`` names who decided (a person, ``admin@<replica>``, ``update``).
        The folder is not opened here (a service machine may see it at this path while the writer
        does not); replicas that cannot load it keep serving their router and report why.
        :class:`RegistryError` for an unknown action, an empty version or by, evidence that is not
        a JSON object; :class:`StoreUnavailableError` when the database cannot be written."""
        if action not in ACTIONS:
            raise RegistryError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
        if not isinstance(version, str) or not version.strip() or len(version) > 256:
            raise RegistryError(f"version {version!r} must be a non-empty string of at most 256 characters")
        if not str(by).strip():
            raise RegistryError("promoted_by must name who made the change")
        ev = _json_object(evidence)
        values = {"version": version, "folder": str(Path(folder).expanduser().absolute()),
                  "action": action, "promoted_at": datetime.now(timezone.utc),
                  "promoted_by": str(by)[:256], "evidence": ev}
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(self.table.insert().values(**values)).inserted_primary_key
        except SQLAlchemyError as e:
            raise StoreUnavailableError(f"cannot record {action} of router {version} in the registry: "
                                        f"{str(getattr(e, 'orig', None) or e).strip().splitlines()[0]}") from None
        assert new_id is not None
        return RegistryEntry(id=int(new_id[0]), **values)

    def rollback(self, by: str, evidence: dict[str, Any] | None = None) -> RegistryEntry:
        """Append a ``rollback`` entry back to :meth:`previous` (the router the current one replaced);
        a second rollback therefore returns to the router rolled back from, like ``/admin/rollback``.
        :class:`NoPreviousRouterError` when there is none."""
        target = self.previous()
        return self.record(target.version, target.folder, "rollback", by,
                           {"rolled_back_to_entry": target.id, **(evidence or {})})

    # ---- reading ---------------------------------------------------------------------------------

    def current(self) -> RegistryEntry | None:
        """The latest entry (the router the fleet should serve), or None for an empty registry."""
        rows = self._latest(1)
        return rows[0] if rows else None

    def history(self, n: int = 20) -> list[RegistryEntry]:
        """The ``n`` latest entries, newest first."""
        if n < 1:
            raise RegistryError(f"history needs n >= 1, not {n}")
        return self._latest(n)

    def previous(self) -> RegistryEntry:
        """The latest entry whose version differs from the current one's (what a rollback returns
        to). :class:`NoPreviousRouterError` when the registry holds no such entry."""
        current = self.current()
        if current is None:
            raise NoPreviousRouterError("the router registry is empty: nothing was promoted, so there is "
                                        "nothing to roll back to")
        t = self.table
        q = (select(t).where(t.c.id < current.id, t.c.version != current.version)
             .order_by(t.c.id.desc()).limit(1))
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        if row is None:
            raise NoPreviousRouterError(f"router {current.version} is the only version in the registry; "
                                        "there is no earlier router to roll back to")
        return _entry(row)

    def _latest(self, n: int) -> list[RegistryEntry]:
        q = select(self.table).order_by(self.table.c.id.desc()).limit(n)
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(q).mappings()]


def _json_object(evidence: dict[str, Any] | None) -> dict[str, Any]:
    """``evidence`` as a JSON-safe dict (non-finite numbers become strings, as promotion.json
    may hold them); :class:`RegistryError` when it is not a mapping of JSON values."""
    if evidence is None:
        return {}
    if not isinstance(evidence, dict):
        raise RegistryError(f"evidence must be a JSON object (a dict), not {type(evidence).__name__}")

    try:
        text = json.dumps(evidence, allow_nan=True, default=str)
        return json.loads(text, parse_constant=str)   # NaN, Infinity -> "NaN", "Infinity"
    except (TypeError, ValueError) as e:
        raise RegistryError(f"evidence is not JSON: {e}") from None


def _entry(row: RowMapping) -> RegistryEntry:
    return RegistryEntry(id=int(row["id"]), version=row["version"], folder=row["folder"],
                         action=row["action"], promoted_at=_utc(row["promoted_at"]),
                         promoted_by=row["promoted_by"], evidence=dict(row["evidence"] or {}))


PROMOTION_FILE = "promotion.json"   # the verdict `neural-router update` writes into its router folder


def promote_folder(folder: str | Path, url: str | Path | Engine, by: str,
                   evidence: dict[str, Any] | None = None) -> RegistryEntry:
    """Record ``folder`` (its version read from router_config.json) as the router every replica of
    the store at ``url`` (or an open store's engine, left open) must serve. ``evidence`` defaults to
    ``{"promotion": <the folder's promotion.json>}`` when the folder has one. :class:`RegistryError`
    for a folder that is not a router folder; :class:`StoreUnavailableError` when the database
    cannot be opened or written."""
    version = folder_version(folder)
    if evidence is None:
        evidence = {}
        verdict = Path(folder).expanduser() / PROMOTION_FILE
        if verdict.is_file():
            try:
                evidence = {"promotion": json.loads(verdict.read_text(encoding="utf-8"))}
            except (OSError, ValueError) as e:
                raise RegistryError(f"{verdict} cannot be read as JSON ({e}); fix or remove it") from None
    if isinstance(url, Engine):
        return RouterRegistry(url).record(version, Path(folder).expanduser().resolve(), "promote", by, evidence)
    with RouterRegistry.from_url(url) as registry:
        return registry.record(version, Path(folder).expanduser().resolve(), "promote", by, evidence)


def rollback_registry(url: str | Path, by: str) -> RegistryEntry:
    """:meth:`RouterRegistry.rollback` on the registry at ``url`` (one call for the CLI)."""
    with RouterRegistry.from_url(url) as registry:
        return registry.rollback(by)
