"""The dynamic batcher on its own: scattering results, limits, and callers that stop waiting."""

from __future__ import annotations

import asyncio
import time

import pytest

from neural_router.serving.engine.batching import DynamicBatcher, QueueFullError


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
