"""Rate limits hold for a whole pool: 4 Ray Data actors running the real HTTP engine against a
local server that records when each request arrived (``tests/fakes/async_openai_server.py``).

Before the shared limiter each actor paced itself, so a pool of 4 sent about 4x ``qps``; the pure
arithmetic of the limiter and its leases is checked without Ray below.
"""

from __future__ import annotations

import asyncio
import time

import pyarrow as pa
import pytest

from tests.fakes.async_openai_server import AsyncOpenAIServer
from themis.config import OpenAIEngineConfig
from themis.dataplane.tables import REQUEST, to_table
from themis.engines import limits
from themis.engines.base import GenerationRequest, request_to_row

ACTORS = 4


def _run_pool(cfg: OpenAIEngineConfig, rows: int) -> dict[str, int]:
    """Answer ``rows`` requests through a pool of 4 actors; rows answered per actor."""
    import ray

    from themis.dataplane.generation import EnginePass, generate

    schema = pa.schema([("n", pa.int64()), ("request", REQUEST)])
    requests = [GenerationRequest([{"role": "user", "content": f"row-{n}"}], max_tokens=8) for n in range(rows)]
    table = to_table(({"n": n, "request": request_to_row(r)} for n, r in enumerate(requests)), schema)
    by_actor: dict[str, int] = {}
    out = generate(ray.data.from_arrow(table), EnginePass("teacher", cfg))
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
        assert batch.column("error").null_count == batch.num_rows, batch.column("error").to_pylist()
        for actor in batch.column("actor").to_pylist():
            by_actor[actor] = by_actor.get(actor, 0) + 1
    return by_actor


def _most_in_any_window(times: list[float], window_s: float) -> int:
    """The most arrivals that fall within any ``window_s`` seconds."""
    times = sorted(times)
    return max(sum(1 for u in times[i:] if u < t + window_s) for i, t in enumerate(times))


@pytest.mark.integration
def test_shared_limit_qps_holds_for_a_pool_of_four_actors(ray_local) -> None:
    qps, rows = 8.0, 48
    pool = {"min_actors": ACTORS, "max_actors": ACTORS, "batch_size": 2, "cpus_per_actor": 0.25}
    with AsyncOpenAIServer(latency=0.2) as server:
        cfg = OpenAIEngineConfig(base_url=server.base_url, model="fake", concurrency=2, qps=qps, pool=pool)
        by_actor = _run_pool(cfg, rows)
        arrivals = server.arrivals()
    assert len(arrivals) == rows and sum(by_actor.values()) == rows
    # The pool really ran in parallel: several actors answered (each one alone may send qps; on a
    # busy 2-core machine the last actors may start after the work is gone).
    assert len(by_actor) >= 2, by_actor
    rate = (rows - 1) / (max(arrivals) - min(arrivals))
    busiest = _most_in_any_window(arrivals, 1.0)
    # Per-actor pacing sent 27 in one second here (3 actors); leases may start a few a little late.
    assert rate <= 1.15 * qps, (rate, by_actor)
    assert busiest <= qps + 3, (busiest, by_actor)


@pytest.mark.integration
def test_shared_limit_tokens_per_minute_holds_for_four_engine_actors(ray_local) -> None:
    # 4 plain Ray actors, all up before any sends (a pool's actors may start too far apart on a
    # busy machine to overlap), each running the real engine on the pool's limiter: the spending
    # they report (batched, fire and forget) reaches the one budget.
    import ray

    rows, budget = 40, 6 * 17  # each reply costs 17 tokens (1 prompt + 16 completion): 6 a window
    with AsyncOpenAIServer(latency=0.1) as server:
        cfg = OpenAIEngineConfig(base_url=server.base_url, model="fake", concurrency=1, tokens_per_minute=budget)
        name = limits.start_shared_limits("teacher", cfg, window_s=1.0)

        @ray.remote(num_cpus=0.25)
        class Engine:
            def __init__(self) -> None:
                from themis.engines.openai_http import OpenAIEngine

                self.engine = OpenAIEngine(cfg, limits=name)

            def generate(self, first: int, n: int) -> int:
                requests = [GenerationRequest([{"role": "user", "content": f"row-{first + i}"}]) for i in range(n)]
                return sum(r.ok for r in self.engine.generate(requests))

        actors = [Engine.remote() for _ in range(ACTORS)]
        ray.get([a.__ray_ready__.remote() for a in actors])
        share = rows // ACTORS
        ok = ray.get([a.generate.remote(i * share, share) for i, a in enumerate(actors)])
        arrivals = server.arrivals()
    assert ok == [share] * ACTORS and len(arrivals) == rows
    # One budget for 4 actors: 6 a window, plus the requests already sent when it ran out (one per
    # actor); 4 budgets would let 4 x 7 through in a second.
    assert _most_in_any_window(arrivals, 1.0) <= 6 + ACTORS + 1
    assert max(arrivals) - min(arrivals) >= 2.0  # 40 rows at 6-10 a window


# --- the arithmetic, without Ray ---------------------------------------------------------------------


def test_shared_limit_leases_continue_one_schedule():
    pool = limits.PoolLimits(qps=10.0, tokens_per_minute=None)
    first, _ = pool.lease(3, now=100.0)
    second, _ = pool.lease(2, now=100.0)  # another actor, at the same moment: after the first's
    assert first == pytest.approx([100.0, 100.1, 100.2]) and second == pytest.approx([100.3, 100.4])
    later, _ = pool.lease(1, now=200.0)  # an idle pool starts again from now, not from the past
    assert later == [200.0]
    with pytest.raises(ValueError, match="at least one start"):
        pool.lease(0)


def test_shared_limit_token_budget_is_one_for_all_reporters():
    pool = limits.PoolLimits(qps=None, tokens_per_minute=30, window_s=60.0)
    assert pool.lease(4, now=0.0) == ([0.0] * 4, 0.0)
    pool.record(20, now=1.0)  # two actors report
    pool.record(10, now=2.0)
    assert pool.lease(1, now=3.0) == ([], pytest.approx(58.001))  # until the first spending expires
    assert pool.lease(1, now=61.5) == ([61.5], 0.0)


def test_shared_limit_gate_leases_a_few_starts_at_a_time():
    calls: list[int] = []

    class Counting(limits.LocalLeaser):
        async def lease(self, want: int) -> tuple[list[float], float]:
            calls.append(want)
            return await super().lease(want)

    qps = 40.0  # a lease covers a quarter second: 10 starts
    gate = limits.Gate(Counting(limits.PoolLimits(qps, None)), qps)

    async def run() -> list[float]:
        async def one() -> float:
            await gate.wait()
            return time.time()

        return await asyncio.gather(*(one() for _ in range(20)))

    starts = sorted(asyncio.run(run()))
    assert calls == [10, 10]  # 20 waiting requests, 2 leases
    assert starts[-1] - starts[0] >= 0.9 * 19 / qps
