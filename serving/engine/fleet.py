"""Fleet: every replica serves the router the registry names.

Replicas that share a store database (``feedback_url``) also share its router registry
(:mod:`neural_router.feedback.registry`). With ``registry_poll_s`` set, a :class:`FleetWatcher`
reads the registry's current entry every ``registry_poll_s`` seconds; when it names another version
than the one this replica serves, the watcher loads and warms up that folder in a worker thread
(:meth:`RouterState.load`, what ``/admin/reload`` uses) and swaps it in with
:meth:`RouterService.swap`: requests already started finish on the old router, none is dropped.

A folder that cannot be served (missing on this machine, corrupt, holding another version than the
entry says, failing its warm-up) changes nothing: the replica keeps serving its router, logs why,
and reports it in ``/healthz`` (``fleet.last_error``, ``fleet.in_sync: false``) and in the metrics
(``router_fleet_in_sync 0``, ``router_fleet_checks_total{outcome="load_error"}``). It tries that
entry again after ``RETRY_POLLS`` polls, and at once when a newer entry appears.

``/admin/reload`` and ``/admin/rollback`` of any replica go through :meth:`FleetWatcher.record`
and :meth:`FleetWatcher.rollback`, so the whole fleet follows them. The registry is the source of
truth: a replica started with ``--router`` of another version loads the registry's router at
start-up, before it takes requests, and serves its own only while the registry is empty (or that
router cannot be served here).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric

from neural_router.feedback.registry import RegistryEntry, RouterRegistry
from neural_router.serving.config import ServeSettings
from neural_router.serving.engine.service import RouterService, RouterState

log = logging.getLogger(__name__)
RETRY_POLLS = 10   # polls before a registry entry that could not be served is tried again
Loader = Callable[[str, ServeSettings], RouterState]


class FleetError(RuntimeError):
    """The registry could not be read or written (database down...): nothing was changed."""


@dataclass(frozen=True)
class FleetStatus:
    """What ``/healthz`` reports under ``fleet``."""

    replica: str
    serving_version: str
    registry_version: str | None = None   # None: the registry is empty (or not read yet)
    registry_entry: int | None = None
    in_sync: bool | None = None           # None until the registry was read once
    last_error: str | None = None         # why the replica does not serve the registry's router
    last_check: datetime | None = None    # UTC, last successful read of the registry
    last_swap: datetime | None = None     # UTC, last router swap made by the watcher


class RouterInfoCollector:
    """``router_info{version, replica} 1``: the router version a replica serves, read at scrape time
    (so every swap, by the watcher or the admin API, shows without bookkeeping)."""

    def __init__(self, version: Callable[[], str], replica: str) -> None:
        self._version, self._replica = version, replica

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily("router_info", "The router this replica serves (value 1), by version.",
                              labels=["version", "replica"])
        g.add_metric([self._version(), self._replica], 1.0)
        yield g


def expose_router_version(registry: CollectorRegistry, service: RouterService, replica: str) -> None:
    """Add ``router_info`` (see :class:`RouterInfoCollector`) to an app's metrics registry."""
    registry.register(RouterInfoCollector(lambda: service.state.version, replica))


def replica_name(settings: ServeSettings) -> str:
    """``settings.replica_id``, or ``<hostname>-<pid>`` when it is None."""
    return settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _reason(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class FleetWatcher:
    """Keeps one replica on the registry's router; see the module docstring.

    ``lock`` is the app's admin lock: the watcher holds it while it loads and swaps, so it never
    races ``/admin/reload``; :meth:`record` and :meth:`rollback` expect their caller to hold it."""

    def __init__(self, service: RouterService, registry: RouterRegistry, *, replica: str, poll_s: float,
                 lock: asyncio.Lock, load: Loader = RouterState.load) -> None:
        if not poll_s > 0:
            raise ValueError(f"registry_poll_s must be > 0 seconds, not {poll_s}")
        self.service, self.registry, self.replica = service, registry, replica
        self.poll_s, self.lock, self.load = float(poll_s), lock, load
        self._status = FleetStatus(replica=replica, serving_version=service.state.version)
        self._failed: tuple[int, float] | None = None   # (registry entry id, monotonic time) not served
        self._task: asyncio.Task[None] | None = None
        r = service.metrics.registry
        self._in_sync = Gauge("router_fleet_in_sync", "1 when this replica serves the registry's router "
                              "(or the registry is empty), 0 when it does not.", registry=r)
        self._checks = Counter("router_fleet_checks_total", "Registry polls by outcome: in_sync, swapped, "
                               "load_error (the registry's router cannot be served here), registry_error.",
                               ["outcome"], registry=r)

    @classmethod
    def from_settings(cls, service: RouterService, lock: asyncio.Lock) -> "FleetWatcher | None":
        """A watcher on the registry of ``settings.feedback_url``, or None when the settings have no
        store or ``registry_poll_s`` is None. StoreUnavailableError (a ValueError) when the
        database cannot be opened."""
        s = service.settings
        if not s.feedback_url or s.registry_poll_s is None:
            return None
        return cls(service, RouterRegistry.from_url(s.feedback_url), replica=replica_name(s),
                   poll_s=s.registry_poll_s, lock=lock)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Check the registry once, then keep polling in the background. Awaited at start-up before
        the app takes requests, so that a replica started with another ``--router`` than the
        registry's router loads the registry's first and never serves a stale router (when the
        registry cannot be read, or its folder cannot be served, start-up goes on as it would alone)."""
        if self._task is None:
            await self._check_logged()
            self._task = asyncio.create_task(self._run(), name="fleet-watcher")

    async def stop(self) -> None:
        """Stop polling and close the registry's connections."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.to_thread(self.registry.close)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            await self._check_logged()

    async def _check_logged(self) -> None:
        try:
            await self.check()
        except Exception:  # noqa: BLE001 - a bug here must stop neither the polling nor the start-up
            log.exception("fleet: registry check failed")

    # ---- state -------------------------------------------------------------------------------
    def status(self) -> FleetStatus:
        """The replica's fleet status now (``serving_version``, ``in_sync`` as of this call)."""
        st, serving = self._status, self.service.state.version
        in_sync = None if st.last_check is None else st.registry_version in (None, serving)
        return replace(st, serving_version=serving, in_sync=in_sync)

    def _note(self, outcome: str, **changes: object) -> None:
        self._status = replace(self._status, **changes)  # type: ignore[arg-type]
        self._checks.labels(outcome).inc()
        self._in_sync.set(1.0 if self.status().in_sync else 0.0)

    # ---- following the registry --------------------------------------------------------------
    async def check(self) -> None:
        """One poll: read the registry's current entry and, when it names another version than the
        one served, load and swap it in (see the module docstring for failures)."""
        try:
            entry = await asyncio.to_thread(self.registry.current)
        except Exception as e:  # noqa: BLE001 - database down, network...: keep serving, say why
            why = f"cannot read the router registry: {_reason(e)}"
            if why != self._status.last_error:   # logged once per outage, not at every poll
                log.warning("fleet: %s; router %s keeps serving", why, self.service.state.version)
            self._note("registry_error", last_error=why)
            return
        seen = {"last_check": _now(), "registry_version": entry.version if entry else None,
                "registry_entry": entry.id if entry else None}
        if entry is None or entry.version == self.service.state.version:
            self._failed = None
            self._note("in_sync", last_error=None, **seen)
            return
        if self._failed is not None and self._failed[0] == entry.id and \
                time.monotonic() - self._failed[1] < RETRY_POLLS * self.poll_s:
            self._note("load_error", **seen)   # keep the error of the failed attempt
            return
        async with self.lock:
            if entry.version == self.service.state.version:   # an admin swap got there first
                self._note("in_sync", last_error=None, **seen)
                return
            await self._follow(entry, seen)

    async def _load(self, entry: RegistryEntry) -> RouterState:
        """Worker thread: load and warm up ``entry``'s folder; ValueError when it cannot be served
        or holds another version than the entry says."""
        state = await asyncio.to_thread(self.load, entry.folder, self.service.settings)
        if state.version != entry.version:
            raise ValueError(f"the folder holds router {state.version}, not {entry.version} as the "
                             "registry says")
        return state

    async def _follow(self, entry: RegistryEntry, seen: dict[str, object]) -> None:
        """Load ``entry``'s folder in a worker thread and swap it in, or keep serving and say why."""
        serving = self.service.state.version
        try:
            state = await self._load(entry)
        except ValueError as e:
            self._failed = (entry.id, time.monotonic())
            why = (f"cannot serve router {entry.version} from {entry.folder} (registry entry {entry.id}, "
                   f"{entry.action} by {entry.promoted_by}): {_reason(e)}; router {serving} keeps serving")
            log.error("fleet: %s", why)
            self._note("load_error", last_error=why, **seen)
            return
        old = self.service.swap(state)
        self._failed = None
        log.info("fleet: serving router %s from %s (registry entry %d, %s by %s), replacing %s",
                 entry.version, entry.folder, entry.id, entry.action, entry.promoted_by, old.version)
        self._note("swapped", last_error=None, last_swap=_now(), **seen)

    # ---- admin actions (the caller holds the lock) --------------------------------------------
    async def record(self, action: str, version: str, folder: str, by: str) -> RegistryEntry:
        """Record that router ``version`` in ``folder`` (loaded, not yet swapped in) is the router to
        serve, so the other replicas follow. When the registry is empty the router served now is
        recorded first, so that a rollback can return to it. :class:`FleetError` when the registry
        cannot be written (then nothing changed: the caller must not swap)."""
        evidence = {"replica": self.replica}
        current = self.service.state
        try:
            if current.router_dir is not None and await asyncio.to_thread(self.registry.current) is None:
                await asyncio.to_thread(self.registry.record, current.version, current.router_dir, "reload",
                                        f"{by} (served before the first registry entry)", evidence)
            entry = await asyncio.to_thread(self.registry.record, version, folder, action, by, evidence)
        except Exception as e:  # noqa: BLE001 - StoreUnavailableError, driver errors
            raise FleetError(f"cannot record the {action} in the router registry ({_reason(e)}); nothing "
                             "was changed, so that the replicas stay on one router") from None
        self._status = replace(self._status, registry_version=entry.version, registry_entry=entry.id,
                               last_check=_now(), last_error=None)
        return entry

    async def rollback(self, by: str) -> RouterState:
        """Serve the registry's previous router (:meth:`RouterRegistry.previous`; when the registry
        holds none, the router this replica served before) on this replica and record the rollback,
        so that every replica follows; returns the state now served.
        LookupError when there is no previous router, ValueError when its folder cannot be served
        here, :class:`FleetError` when the registry cannot be read or written."""
        current, prev = self.service.state, self.service.previous
        try:
            target = await asyncio.to_thread(self.registry.previous)
        except LookupError:
            if prev is None or prev.router_dir is None:
                raise
            # the registry knows no earlier router (e.g. the replicas' own --router was never recorded
            # before a promotion): back to the one this replica served before
            target = RegistryEntry(id=0, version=prev.version, folder=prev.router_dir, action="reload",
                                   promoted_at=_now(), promoted_by=self.replica)
        except Exception as e:  # noqa: BLE001
            raise FleetError(f"cannot read the router registry ({_reason(e)}); nothing was changed") from None
        if current.version == target.version:
            state = current                    # served already (it did not follow the registry)
        elif prev is not None and prev.version == target.version:
            state = prev                       # still loaded: no load, no warm-up
        else:
            state = await self._load(target)
        entry = await self.record("rollback", target.version, target.folder, by)
        if state is not current:
            self.service.swap(state)
        log.info("fleet: rolled back to router %s (registry entry %d)", entry.version, entry.id)
        return state
