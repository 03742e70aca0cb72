"""Dynamic batching: concurrent callers' items are run together in one worker-thread call.

A single collector task takes queued items once ``max_batch_size`` are waiting or the oldest has
waited ``max_wait_ms``, runs ``fn(items)`` in a worker thread (never on the event loop) and
scatters the results to the callers' futures. While a batch runs, new items queue up, so under load
batches fill without waiting. The queue is bounded: :meth:`DynamicBatcher.submit` raises
:class:`QueueFullError` (the API answers 429) instead of growing without limit. Callers that stop
waiting (timeouts) cancel their futures and their items are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


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
    enqueued: float


class DynamicBatcher(Generic[T, R]):
    """Queue items from many coroutines; run them through ``fn`` in batches in one worker thread.

    ``fn`` maps a list of items to a list of results of the same length. If it raises for a batch of
    several items, each item is retried alone so one bad input fails only its own caller.
    ``on_batch(size, seconds)`` and ``on_queue_depth(depth)`` are optional metric hooks.
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
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._batch_seconds = 0.01  # moving average, for Retry-After

    # ---- lifecycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-infer")
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="router-batcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        while self._queue:
            entry = self._queue.popleft()
            if not entry.future.done():
                entry.future.set_exception(BatcherClosedError("router is shutting down"))
        self._report_depth()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def run_in_worker(self, fn: Callable[[], object]) -> object:
        """Run ``fn`` on the inference thread (e.g. a warm-up call), serialised with batches."""
        if self._executor is None:
            raise BatcherClosedError("router batcher is not running")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # ---- submitting --------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        return len(self._queue)

    def submit(self, items: Sequence[T]) -> list[asyncio.Future[R]]:
        """Queue ``items`` (all or none) and return one future per item."""
        if not self.running or self._wakeup is None:
            raise BatcherClosedError("router batcher is not running")
        if len(self._queue) + len(items) > self.max_queue:
            batches_ahead = math.ceil((len(self._queue) + len(items)) / self.max_batch_size)
            raise QueueFullError(len(self._queue), self.max_queue,
                                 max(1, math.ceil(batches_ahead * self._batch_seconds)))
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures: list[asyncio.Future[R]] = []
        for item in items:
            fut: asyncio.Future[R] = loop.create_future()
            self._queue.append(_Entry(item, fut, now))
            futures.append(fut)
        self._report_depth()
        self._wakeup.set()
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

    # ---- the collector -----------------------------------------------------------------------
    def _report_depth(self) -> None:
        if self._on_queue_depth is not None:
            self._on_queue_depth(len(self._queue))

    def _take_batch(self) -> list[_Entry[T, R]]:
        batch: list[_Entry[T, R]] = []
        while self._queue and len(batch) < self.max_batch_size:
            entry = self._queue.popleft()
            if not entry.future.done():  # cancelled callers are skipped
                batch.append(entry)
        self._report_depth()
        return batch

    async def _collect(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            deadline = self._queue[0].enqueued + self.max_wait_s
            while len(self._queue) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            try:
                await self._run_batch(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - never let the collector die
                log.exception("dynamic batcher: unexpected error; failing the batch")
                for e in batch:
                    if not e.future.done():
                        e.future.set_exception(exc)

    async def _run_batch(self, batch: list[_Entry[T, R]]) -> None:
        assert self._executor is not None
        items = [e.item for e in batch]
        t0 = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self._call, items)
        except asyncio.CancelledError:
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(BatcherClosedError("router is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - delivered to the callers
            results = [exc] * len(batch)
        seconds = time.perf_counter() - t0
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
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
        """Worker thread: the whole batch, or item by item if the batch fails."""
        try:
            out = list(self._fn(items))
            if len(out) != len(items):
                raise RuntimeError(f"batch function returned {len(out)} results for {len(items)} items")
            return list(out)
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
