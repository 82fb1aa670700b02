"""The serving batcher: batches form when the engine is free, so under load every call is full."""

from __future__ import annotations

import asyncio

import pytest

from themis.serving.batcher import EngineBatcher


class SlowEngine:
    """Takes ``seconds`` per call whatever the batch size; records each batch."""

    def __init__(self, seconds: float = 0.05, fail_on: object = None):
        self.seconds, self.fail_on, self.batches = seconds, fail_on, []

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        if self.fail_on in items:
            raise RuntimeError("engine failed")
        return [item * 10 for item in items]


def test_batches_fill_while_the_engine_is_busy() -> None:
    """32 concurrent requests, cap 8: one lone first call, then full batches (not 1-2 per call)."""
    engine = SlowEngine()

    async def main() -> list:
        batcher = EngineBatcher(engine, max_batch_size=8, wait_s=0.0)
        return await asyncio.gather(*(batcher.submit(i) for i in range(32)))

    assert asyncio.run(main()) == [i * 10 for i in range(32)]
    sizes = [len(b) for b in engine.batches]
    assert sum(sizes) == 32 and max(sizes) == 8
    assert sizes.count(8) >= 3, sizes


def test_a_lone_request_waits_at_most_wait_s_and_late_arrivals_join() -> None:
    engine = SlowEngine(seconds=0.0)

    async def main() -> None:
        batcher = EngineBatcher(engine, max_batch_size=4, wait_s=0.2)
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit(2))
        assert await asyncio.wait_for(asyncio.gather(first, second), 1.0) == [10, 20]

    asyncio.run(main())
    assert engine.batches == [[1, 2]]


def test_a_failed_engine_call_fails_its_batch_only_and_the_batcher_goes_on() -> None:
    engine = SlowEngine(fail_on=3)

    async def main() -> None:
        batcher = EngineBatcher(engine, max_batch_size=4, wait_s=0.0)
        outcomes = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        assert await batcher.submit(5) == 50

    asyncio.run(main())


def test_a_cancelled_request_leaves_before_its_batch_runs() -> None:
    engine = SlowEngine(seconds=0.1)

    async def main() -> None:
        batcher = EngineBatcher(engine, max_batch_size=8, wait_s=0.0)
        running = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)  # the engine is busy with [1]
        gone = asyncio.ensure_future(batcher.submit(2))
        kept = asyncio.ensure_future(batcher.submit(3))
        await asyncio.sleep(0.01)
        gone.cancel()
        assert await running == 10 and await kept == 30

    asyncio.run(main())
    assert engine.batches == [[1], [3]]


def test_a_result_count_that_does_not_match_fails_the_batch() -> None:
    async def short(items: list) -> list:
        return items[:-1]

    async def main() -> None:
        batcher = EngineBatcher(short, max_batch_size=2, wait_s=0.0)
        with pytest.raises(RuntimeError, match="returned 1 results for 2"):
            await asyncio.gather(batcher.submit(1), batcher.submit(2))

    asyncio.run(main())


def test_batch_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EngineBatcher(SlowEngine(), max_batch_size=0, wait_s=0.0)
