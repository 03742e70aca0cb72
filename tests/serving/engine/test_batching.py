"""The dynamic batcher on its own: scattering results, limits, and callers that stop waiting."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from neural_router.serving.engine.batching import BatcherClosedError, DynamicBatcher, QueueFullError


def test_batcher_scatters_results_and_respects_limits() -> None:
    seen: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [i * 10 for i in items]

    async def go() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn, max_batch_size=4, max_wait_ms=20, max_queue=6)
        await b.start()
        results = await asyncio.gather(*(b.run([i], 1.0) for i in range(6)))
        assert [r[0] for r in results] == [i * 10 for i in range(6)]
        assert [len(s) for s in seen] == [4, 2]
        with pytest.raises(QueueFullError):
            b.submit(list(range(7)))
        assert await b.run([1, 2, 3], 1.0) == [10, 20, 30]
        await b.stop()
        assert not b.running

    asyncio.run(go())


def test_batcher_skips_callers_that_timed_out() -> None:
    calls: list[list[str]] = []

    def fn(items: list[str]) -> list[str]:
        calls.append(items)
        time.sleep(0.1)
        return items

    async def go() -> None:
        b: DynamicBatcher[str, str] = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=0, max_queue=10)
        await b.start()
        first = asyncio.ensure_future(b.run(["first"], 1.0))
        await asyncio.sleep(0.01)
        with pytest.raises(asyncio.TimeoutError):
            await b.run(["impatient"], 0.02)
        assert await first == ["first"]
        assert await b.run(["third"], 1.0) == ["third"]
        await b.stop()

    asyncio.run(go())
    assert ["impatient"] not in calls


def test_next_batch_starts_while_the_event_loop_is_busy() -> None:
    """The inference thread takes the queued batch as soon as the previous one ends, without a
    turn of the event loop (which, under load, is busy answering the previous batch's callers)."""
    started: list[float] = []

    def fn(items: list[str]) -> list[str]:
        started.append(time.monotonic())
        time.sleep(0.05)
        return items

    async def go() -> None:
        b: DynamicBatcher[str, str] = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=0, max_queue=10)
        await b.start()
        futures = b.submit(["a"]) + b.submit(["b"])
        time.sleep(0.4)  # blocks the event loop: nothing scheduled on it runs meanwhile
        unblocked = time.monotonic()
        assert [await f for f in futures] == ["a", "b"]
        assert len(started) == 2 and started[1] < unblocked
        await b.stop()

    asyncio.run(go())


def test_stop_fails_waiting_callers_and_a_restarted_batcher_serves_again() -> None:
    gate = threading.Event()

    def fn(items: list[str]) -> list[str]:
        gate.wait(2)
        return items

    async def go() -> None:
        b: DynamicBatcher[str, str] = DynamicBatcher(fn, max_batch_size=1, max_wait_ms=0, max_queue=10)
        await b.start()
        running, queued = b.submit(["a"]), b.submit(["b"])
        await asyncio.sleep(0.05)  # "a" is in the inference thread, "b" waits in the queue
        await b.stop()
        assert not b.running
        for f in running + queued:
            with pytest.raises(BatcherClosedError):
                await f
        with pytest.raises(BatcherClosedError):
            b.submit(["c"])
        with pytest.raises(BatcherClosedError):
            await b.run_in_worker(lambda: None)
        gate.set()
        await b.start()
        assert await b.run(["d"], 1.0) == ["d"]
        assert await b.run_in_worker(lambda: threading.current_thread().name) == "router-infer"
        await b.stop()

    asyncio.run(go())


def test_a_failing_batch_is_retried_item_by_item() -> None:
    def fn(items: list[int]) -> list[int]:
        if 0 in items:
            raise ValueError("zero")
        return [10 // i for i in items]

    async def go() -> None:
        b: DynamicBatcher[int, int] = DynamicBatcher(fn, max_batch_size=8, max_wait_ms=20, max_queue=10)
        await b.start()
        futures = b.submit([1, 0, 5])
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert results[0] == 10 and results[2] == 2 and isinstance(results[1], ValueError)
        await b.stop()

    asyncio.run(go())
