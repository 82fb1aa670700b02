"""Request batching for an engine that runs one call at a time: batches form when the engine is free.

Requests wait in one queue. When the engine finishes a call, the next batch takes everything that
queued meanwhile (up to ``max_batch_size``); only an idle engine waits up to ``wait_s`` for more
before it starts. So under load every engine call is full, and a lone request waits at most
``wait_s``.

Why not Ray Serve's ``@serve.batch``: in Ray 2.60 it closes a batch as soon as its wait ends and
queues it behind the running one, so under load it runs batches of one or two requests while
dozens wait (measured: 32 clients against a 200 ms engine call, batch cap 8, 9 requests/s in
batches of 1-2; see ``tests/benchmarks/bench_serve.py``).

Pure asyncio (no Ray): the serving module wraps its engine call in it; unit-tested on its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class EngineBatcher(Generic[Item, Result]):
    """``await batcher.submit(item)`` returns ``run([... item ...])``'s result for that item.

    ``run`` takes a list and returns one result per item, in order; an exception it raises fails
    every request of that batch. A request cancelled while it waits leaves before its batch runs.
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[Sequence[Result]]],
        max_batch_size: int,
        wait_s: float,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, not {max_batch_size}")
        self._run, self.max_batch_size, self.wait_s = run, max_batch_size, wait_s
        self._on_batch = on_batch or (lambda size: None)
        self._queue: asyncio.Queue | None = None  # made on the event loop that first submits
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Item) -> Result:
        queue = self._queue = self._queue or asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._serve_forever(queue))
        future = asyncio.get_running_loop().create_future()
        queue.put_nowait((item, future))
        return await future

    async def _serve_forever(self, queue: asyncio.Queue) -> None:
        while True:
            batch = await self._next_batch(queue)
            if batch:
                await self._run_batch(batch)

    async def _next_batch(self, queue: asyncio.Queue) -> list[tuple[Item, asyncio.Future]]:
        """The first waiting request, everything queued behind it, and (if that is not a full batch)
        whatever arrives within ``wait_s``; requests whose caller gave up are dropped."""
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch_size:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return [(item, future) for item, future in batch if not future.done()]

    async def _run_batch(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        self._on_batch(len(batch))
        try:
            results = await self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"the engine returned {len(results)} results for {len(batch)} requests")
        except Exception as exc:  # every request of the batch fails with it; the batcher goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
