"""Throughput of the judge endpoint: `make bench-serve` (or `python tests/benchmarks/bench_serve.py`).

For the tiny random model and SmolLM2-135M on CPU, in one run: requests/s and p50/p99 latency of
``POST /v1/judge`` at 1, 8 and 32 concurrent clients, with batching on (``serve.batch_size``) and
with batch size 1, on a real local Ray Serve; and the ceiling, the same engine called in-process
with full batches of the same requests. Clients are asyncio + aiohttp in this process (the cheapest
client measured on these machines). The batched 32-client run is repeated between ceiling
measurements (ceiling, run, ceiling, run, ..., ceiling), because this shared box's speed drifts by
up to 1.5x between minutes: each run is compared with the mean of the ceilings just before and just
after it, and the headline is the median of those ratios. Ends with one line:

    RESULT endpoint_over_engine=<x> batched_over_unbatched=<x> p99_ms_32=<ms>

for the tiny model at 32 clients (endpoint requests/s over the engine's ceiling; batched over
unbatched requests/s; batched p99 in ms). Not a pytest test: figures are printed, not asserted.
``BENCH_MODELS=tiny`` runs the tiny model only; ``BENCH_QUICK=1`` sends a quarter of the requests
(for a machine other jobs share).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from themis.config import RayConfig, ServeConfig  # noqa: E402
from themis.judge.call import judge_request  # noqa: E402
from themis.serving.api import check_judge_request, judge_call  # noqa: E402
from themis.serving.models import JudgeRequest  # noqa: E402

CLIENTS = (1, 8, 32)
BATCH = 8
# The replica's CPUs and torch threads; the in-process ceiling uses as many. One of this machine's two
# cores: the other serves the HTTP proxy and the load generator, which a replica with two torch
# threads would fight for (its engine then runs ~1.5x slower than alone). BENCH_CPUS=2 to compare.
CPUS = int(os.environ.get("BENCH_CPUS", "1"))
# Requests per run at each client count, per model (SmolLM2 is ~20x slower than the tiny model).
REQUESTS = {"tiny": {1: 16, 8: 64, 32: 128}, "smollm2": {1: 3, 8: 16, 32: 32}}
CEILING_REQUESTS = {"tiny": 64, "smollm2": 32}  # full batches of BATCH, in one engine call
PAIRS = {"tiny": 7, "smollm2": 1}  # batched 32-client runs, each between two ceilings; the median counts
MAX_TOKENS = {"tiny": 32, "smollm2": 16}
if os.environ.get("BENCH_QUICK"):
    REQUESTS = {name: {c: max(c, n // 4) for c, n in runs.items()} for name, runs in REQUESTS.items()}


def bodies(n: int) -> list[dict]:
    """Judge calls that differ only in the response, so every batch has the same shape."""
    return [
        {"instruction": "What is the capital of France?", "response": f"Paris, answer {i}.", "scenario": "close_qa"}
        for i in range(n)
    ]


def serve_config(model: str, batch_size: int) -> ServeConfig:
    return ServeConfig(
        model=model,
        model_name="bench",
        cpus_per_replica=CPUS,
        batch_size=batch_size,
        batch_wait_s=0.005,
        autoscaling={"min_replicas": 1, "max_replicas": 1},
        sampling={"max_tokens": MAX_TOKENS["tiny" if "tiny" in model else "smollm2"]},
        limits={"generation_deadline_s": 600, "max_ongoing_requests": 64, "max_queued_requests": 256},
    )


class Ceiling:
    """The engine alone, in this process, with CPUS torch threads as in the replica."""

    def __init__(self, model: str, n: int) -> None:
        from themis.engines import build_engine
        from themis.serving.options import serve_engine_config

        cfg = serve_config(model, BATCH)
        self.engine = build_engine(serve_engine_config(cfg, model))
        self.requests = [engine_request(b, cfg) for b in bodies(n)]
        self.engine.generate(self.requests[:BATCH])  # warm-up

    def measure(self) -> float:
        """Requests/s on full batches of the same requests."""
        start = time.perf_counter()
        self.engine.generate(self.requests)
        return len(self.requests) / (time.perf_counter() - start)


def engine_request(body: dict, cfg: ServeConfig):
    req = JudgeRequest.model_validate(body)
    kind = check_judge_request(req)
    return judge_request(judge_call(req, kind, req.scenario), cfg.sampling)


async def load(url: str, clients: int, n: int) -> tuple[float, float, float, int]:
    """``n`` requests from ``clients`` concurrent clients: (requests/s, p50 ms, p99 ms, errors)."""
    import aiohttp

    queue = list(bodies(n))
    latencies: list[float] = []
    errors = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while queue:
            body = queue.pop()
            start = time.perf_counter()
            async with session.post(f"{url}/v1/judge", json=body) as reply:
                await reply.read()
                errors += reply.status != 200
            latencies.append((time.perf_counter() - start) * 1000)

    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=clients)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        seconds = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return n / seconds, statistics.median(latencies), q[98], errors


def bench_endpoint(model: str, name: str, port: int, ceiling: Ceiling) -> tuple[dict, list[tuple[float, tuple]]]:
    """Deploy with batching and with batch size 1; load each at every client count. Returns the
    runs (for the batched 32-client run, the median pair's) and the pairs (the mean requests/s of
    the ceilings just before and after a batched 32-client run, that run)."""
    from ray import serve

    from themis.serving.app import build_app
    from themis.stages.serve import wait_until_healthy

    url = f"http://127.0.0.1:{port}"
    out, pairs = {}, []
    for batch in (BATCH, 1):
        serve.run(build_app(serve_config(model, batch), model), name="bench", route_prefix="/", blocking=False)
        wait_until_healthy(url, timeout_s=300)
        asyncio.run(load(url, 4, 8))  # warm-up
        for clients in CLIENTS:
            if (batch, clients) != (BATCH, 32):
                out[batch, clients] = run = asyncio.run(load(url, clients, REQUESTS[name][clients]))
                _print_run(name, batch, clients, run)
                continue
            before = _measure_ceiling(name, ceiling)
            for _ in range(PAIRS[name]):
                run = asyncio.run(load(url, clients, REQUESTS[name][clients]))
                _print_run(name, batch, clients, run)
                after = _measure_ceiling(name, ceiling)
                pairs.append(((before + after) / 2, run))
                before = after
            out[batch, clients] = median_pair(pairs)[1]
        serve.delete("bench")
    return out, pairs


def _measure_ceiling(name: str, ceiling: Ceiling) -> float:
    rps = ceiling.measure()
    print(f"{name:8} engine alone, full batches of {BATCH}: {rps:7.2f} req/s", flush=True)
    return rps


def median_pair(pairs: list[tuple[float, tuple]]) -> tuple[float, tuple]:
    """The pair with the median endpoint-over-engine ratio."""
    ranked = sorted(pairs, key=lambda pair: pair[1][0] / pair[0])
    return ranked[len(ranked) // 2]


def _print_run(name: str, batch: int, clients: int, result: tuple) -> None:
    rps, p50, p99, errors = result
    print(
        f"{name:8} batch={batch:<2} clients={clients:<3} {rps:7.2f} req/s  p50={p50:8.0f} ms  "
        f"p99={p99:8.0f} ms  errors={errors}",
        flush=True,
    )


def models() -> dict[str, str]:
    from tests.fakes.tiny_model import build_tiny_model
    from themis.models import resolve_model

    found = {"tiny": str(build_tiny_model(Path(tempfile.mkdtemp(prefix="bench-tiny-"))))}
    if os.environ.get("BENCH_MODELS", "tiny,smollm2") != "tiny":
        found["smollm2"] = str(resolve_model("builtin:smollm2-135m-instruct"))
    return found


def main() -> None:
    from ray import serve

    from themis.runtime import init_ray
    from themis.stages.serve import free_port

    found = models()
    quick = 4 if os.environ.get("BENCH_QUICK") else 1
    ceilings = {name: Ceiling(path, max(BATCH, CEILING_REQUESTS[name] // quick)) for name, path in found.items()}
    init_ray(RayConfig(num_cpus=CPUS, object_store_memory_mb=400, profile="small_machine"))
    port = free_port("127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port}, grpc_options={"grpc_servicer_functions": []})
    results = {name: bench_endpoint(path, name, port, ceilings[name]) for name, path in found.items()}
    serve.shutdown()
    ratios = {}
    for name, (runs, pairs) in results.items():
        each = ", ".join(f"{run[0]:.2f}/{engine:.2f}" for engine, run in pairs)
        engine, run = median_pair(pairs)
        ratios[name] = run[0] / engine
        print(
            f"{name:8} at 32 clients: endpoint/engine {ratios[name]:.2f} (median of {len(pairs)}: {each} req/s), "
            f"batched/unbatched {runs[BATCH, 32][0] / runs[1, 32][0]:.2f}",
            flush=True,
        )
    tiny = results["tiny"][0]
    print(
        f"RESULT endpoint_over_engine={ratios['tiny']:.2f} "
        f"batched_over_unbatched={tiny[BATCH, 32][0] / tiny[1, 32][0]:.2f} p99_ms_32={tiny[BATCH, 32][2]:.0f}"
    )


if __name__ == "__main__":
    main()
