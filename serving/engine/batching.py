"""Dynamic batching: concurrent callers' items are run together in one inference thread.

A dedicated inference thread takes queued items once ``max_batch_size`` are waiting or the oldest
has waited ``max_wait_ms``, runs ``fn(items)`` (never on the event loop) and hands the results back
to the event loop in one callback per batch, which sets the callers' futures. The thread takes the
next batch as soon as the previous one is done, without waiting for the event loop (which may be
busy answering the previous batch's callers): while a batch runs, new items queue up, so under load
batches fill without waiting and the inference thread is never idle while work is queued. The
queue is bounded: :meth:`DynamicBatcher.submit` raises :class:`QueueFullError` (the API answers 429)
instead of growing without limit. Callers that stop waiting (timeouts) cancel their futures and
their items are skipped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)
_IDLE_POLL_S = 0.5  # an idle inference thread checks this often whether its event loop is gone


class QueueFullError(RuntimeError):
    """The queue cannot take the items now; retry after ``retry_after_s`` seconds."""

    def __init__(self, queued: int, limit: int, retry_after_s: int) -> None:
        super().__init__(f"router queue is full ({queued} queued, limit {limit}); retry later")
        self.retry_after_s = retry_after_s


class BatcherClosedError(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass
class _Entry(Generic[T, R]):
    item: T
    future: asyncio.Future[R]
    enqueued: float  # time.monotonic() seconds


_Call = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


class DynamicBatcher(Generic[T, R]):
    """Queue items from many coroutines of one event loop; run them through ``fn`` in batches in
    one inference thread.

    ``fn`` maps a list of items to a list of results of the same length. If it raises for a batch of
    several items, each item is retried alone so one bad input fails only its own caller.
    ``on_batch(size, seconds)`` (called on the event loop) and ``on_queue_depth(depth)`` (called on
    either thread: it must be thread-safe, as Prometheus metrics are) are optional metric hooks.
    """

    def __init__(self, fn: Callable[[list[T]], list[R]], *, max_batch_size: int, max_wait_ms: float,
                 max_queue: int, on_batch: Callable[[int, float], None] | None = None,
                 on_queue_depth: Callable[[int], None] | None = None) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._on_batch = on_batch
        self._on_queue_depth = on_queue_depth
        self._queue: deque[_Entry[T, R]] = deque()
        self._calls: deque[_Call] = deque()  # run_in_worker's functions, ahead of the next batch
        self._cond = threading.Condition()   # guards _queue, _calls and _inflight
        self._inflight: list[_Entry[T, R]] = []
        self._thread: threading.Thread | None = None
        self._stop_flag: threading.Event | None = None  # one per thread: a restart never revives an old one
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch_seconds = 0.01  # moving average, for Retry-After

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        """Start the inference thread; the batcher serves the running event loop only."""
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self._stop_flag = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(self._loop, self._stop_flag),
                                        name="router-infer", daemon=False)
        self._thread.start()

    async def stop(self) -> None:
        """Fail everything queued or running with :class:`BatcherClosedError` and let the thread
        end after its current batch (not waited for: a batch's result is no longer wanted)."""
        self._thread = None
        with self._cond:
            if self._stop_flag is not None:
                self._stop_flag.set()
            failed, calls = [*self._inflight, *self._queue], list(self._calls)
            self._queue.clear()
            self._calls.clear()
            self._inflight = []
            self._cond.notify_all()
            self._report_depth()
        for entry in failed:
            if not entry.future.done():
                entry.future.set_exception(BatcherClosedError("router is shutting down"))
        for _, cf in calls:
            if cf.set_running_or_notify_cancel():
                cf.set_exception(BatcherClosedError("router is shutting down"))

    async def run_in_worker(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the inference thread (e.g. a warm-up call), serialised with batches."""
        if not self.running:
            raise BatcherClosedError("router batcher is not running")
        cf: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            self._calls.append((fn, cf))
            self._cond.notify()
        return await asyncio.wrap_future(cf)

    # ---- submitting (event loop) -------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, items: Sequence[T]) -> list[asyncio.Future[R]]:
        """Queue ``items`` (all or none) and return one future per item."""
        if not self.running:
            raise BatcherClosedError("router batcher is not running")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[R]] = [loop.create_future() for _ in items]
        with self._cond:
            queued = len(self._queue)
            if queued + len(items) > self.max_queue:
                batches_ahead = math.ceil((queued + len(items)) / self.max_batch_size)
                raise QueueFullError(queued, self.max_queue,
                                     max(1, math.ceil(batches_ahead * self._batch_seconds)))
            now = time.monotonic()
            self._queue.extend(_Entry(item, fut, now) for item, fut in zip(items, futures))
            self._report_depth()
            self._cond.notify()
        return futures

    async def run(self, items: Sequence[T], timeout_s: float) -> list[R]:
        """Submit ``items`` and wait for all results; raises TimeoutError after ``timeout_s``."""
        futures = self.submit(items)
        try:
            return await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
        finally:
            for f in futures:  # timed out or the client went away: skip what has not run yet
                if not f.done():
                    f.cancel()

    # ---- the inference thread ----------------------------------------------------------------
    def _report_depth(self) -> None:
        if self._on_queue_depth is not None:
            self._on_queue_depth(len(self._queue))

    def _take_batch(self) -> list[_Entry[T, R]]:
        """Under the lock: up to max_batch_size queued items whose callers still wait."""
        batch: list[_Entry[T, R]] = []
        while self._queue and len(batch) < self.max_batch_size:
            entry = self._queue.popleft()
            if not entry.future.done():  # cancelled callers are skipped
                batch.append(entry)
        self._report_depth()
        return batch

    def _next_work(self, loop: asyncio.AbstractEventLoop,
                   stop: threading.Event) -> _Call | list[_Entry[T, R]] | None:
        """Block until a run_in_worker call or a batch is due; None when this thread should end
        (stopped, or its event loop closed)."""
        with self._cond:
            while not stop.is_set() and not loop.is_closed():
                if self._calls:
                    return self._calls.popleft()
                if not self._queue:
                    self._cond.wait(_IDLE_POLL_S)
                    continue
                wait_s = self._queue[0].enqueued + self.max_wait_s - time.monotonic()
                if len(self._queue) < self.max_batch_size and wait_s > 0:
                    self._cond.wait(wait_s)
                    continue
                batch = self._take_batch()
                if batch:
                    self._inflight = batch
                    return batch
            return None

    def _work(self, loop: asyncio.AbstractEventLoop, stop: threading.Event) -> None:
        """The inference thread: calls and batches back to back, until stopped or the loop closes."""
        while True:
            try:
                work = self._next_work(loop, stop)
                if work is None:
                    return
                if isinstance(work, tuple):
                    self._run_call(*work)
                else:
                    self._run_batch(loop, work)
            except RuntimeError:  # the loop closed meanwhile: nobody waits for results any more
                if loop.is_closed():
                    return
                log.exception("dynamic batcher: unexpected error in the inference thread")
            except Exception:  # noqa: BLE001 - never let the inference thread die
                log.exception("dynamic batcher: unexpected error in the inference thread")

    @staticmethod
    def _run_call(fn: Callable[[], Any], cf: concurrent.futures.Future[Any]) -> None:
        if cf.set_running_or_notify_cancel():  # False: the caller stopped waiting
            try:
                cf.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - delivered to the caller
                cf.set_exception(exc)

    def _run_batch(self, loop: asyncio.AbstractEventLoop, batch: list[_Entry[T, R]]) -> None:
        """Inference thread: run one batch and hand its results to the loop in one callback."""
        t0 = time.perf_counter()
        results = self._call([e.item for e in batch])
        seconds = time.perf_counter() - t0
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        with self._cond:
            self._inflight = []
        loop.call_soon_threadsafe(self._deliver, batch, results, seconds)

    def _deliver(self, batch: list[_Entry[T, R]], results: list[R | BaseException], seconds: float) -> None:
        """Event loop: count the batch and set its callers' futures (those still waiting)."""
        if self._on_batch is not None:
            self._on_batch(len(batch), seconds)
        for entry, result in zip(batch, results):
            if entry.future.done():
                continue
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)

    def _call(self, items: list[T]) -> list[R | BaseException]:
        """Inference thread: the whole batch, or item by item if the batch fails."""
        try:
            out = list(self._fn(items))
            if len(out) != len(items):
                raise RuntimeError(f"batch function returned {len(out)} results for {len(items)} items")
            return out
        except Exception as exc:  # noqa: BLE001
            if len(items) == 1:
                return [exc]
            log.warning("batch of %d failed (%s); retrying items one by one", len(items), exc)
            singles: list[R | BaseException] = []
            for item in items:
                try:
                    singles.append(self._fn([item])[0])
                except Exception as one_exc:  # noqa: BLE001
                    singles.append(one_exc)
            return singles
