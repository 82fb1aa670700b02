"""One bad request fails alone, in every batch shape: the replica's batching path (``EngineBatcher``
feeding ``generate_isolated``, as ``JudgeServer`` wires them) on fake engines, without Serve.

Two ways an engine fails for one bad row: the whole call raises (``FakeJudgeEngine``'s POISON), or
it fails the rows of the sub-batch that held it and answers the rest, as the transformers engine
does (``SubBatchEngine``'s BADROW). The second is the case where a success elsewhere in the call
used to leave the bad row's sub-batch-mates failed.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.fakes.judge_engine import FakeJudgeEngine
from themis.engines.base import GenerationRequest, GenerationResult
from themis.serving.batcher import EngineBatcher
from themis.serving.replica import generate_isolated


class SubBatchEngine(FakeJudgeEngine):
    """Generates in sub-batches of ``rows``; a sub-batch holding BADROW fails all of its rows."""

    def __init__(self, rows: int = 2):
        super().__init__()
        self.rows, self.calls = rows, []

    def generate(self, requests):
        self.calls.append(len(requests))
        results = super().generate(requests)
        for start in range(0, len(requests), self.rows):
            chunk = requests[start : start + self.rows]
            if any("BADROW" in m["content"] for r in chunk for m in r.messages):
                results[start : start + self.rows] = [GenerationResult(error="ValueError: bad row")] * len(chunk)
        return results


def _request(text: str) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], prefix="Verdict: [[", choices=("A", "B"))


def _through_the_batcher(engine, texts: list[str]) -> tuple[list[GenerationResult], list[int]]:
    """Submit all texts at once; the batcher puts them in one engine batch, in this order."""
    sizes: list[int] = []

    async def run_batch(requests):
        return await asyncio.to_thread(generate_isolated, engine, requests)

    async def main():
        batcher = EngineBatcher(run_batch, max_batch_size=len(texts), wait_s=0.05, on_batch=sizes.append)
        return await asyncio.gather(*(batcher.submit(_request(t)) for t in texts))

    return asyncio.run(main()), sizes


SHAPES = {
    "first": "Pggg",
    "middle": "ggPgg",
    "last": "gggP",
    "mixed": "gPggPgPg",
    "pairs": "PgPg",
    "adjacent": "ggPPgg",
    "alone": "P",
    "all bad": "PPP",
}


@pytest.mark.parametrize("marker", ["BADROW", "POISON"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_poison_alone_in_every_batch_shape(shape, marker):
    engine = SubBatchEngine(rows=2)
    texts = [f"{marker} {i}" if c == "P" else f"good {i}" for i, c in enumerate(shape)]
    results, sizes = _through_the_batcher(engine, texts)
    assert sizes == [len(shape)]  # one engine batch, as the shape says
    assert [r.ok for r in results] == [c == "g" for c in shape], (shape, [r.error for r in results])
    assert all(r.text.startswith("Verdict: [[") for r in results if r.ok)
    # A whole-call failure retries every row alone; a sub-batch failure only the rows that failed.
    failed = len(shape) if marker == "POISON" else sum(len(c) for c in _failed_sub_batches(shape))
    assert engine.calls == [len(shape)] + ([1] * failed if len(shape) > 1 else [])


def _failed_sub_batches(shape: str, rows: int = 2) -> list[str]:
    chunks = [shape[i : i + rows] for i in range(0, len(shape), rows)]
    return [c for c in chunks if "P" in c]


def test_a_row_past_the_deadline_is_not_retried():
    class Late(FakeJudgeEngine):
        calls = 0

        def generate(self, requests):
            Late.calls += 1
            return [GenerationResult(error="deadline: generation did not finish in time")] * len(requests)

    results = generate_isolated(Late(), [_request("a"), _request("b")])
    assert [r.error.startswith("deadline") for r in results] == [True, True] and Late.calls == 1
