"""Throughput of the HTTP engine through the generation path: `make bench-generation`.

Runs judge prompts (``themis.judge.call``) through ``themis.dataplane.generation.generate`` (the judgments
stage's path: Ray Data, an async engine actor, ``OpenAIEngine``) against a local OpenAI-compatible
server (``tests/fakes/async_openai_server.py``, asyncio, in its own process) and prints:

- the server alone: a bare aiohttp client at 0 latency, to show the server is never the bottleneck;
- (a) latency-bound: 1 s a call, 64 in flight; ``ratio`` = rows/s / (64 / 1 s), bar 0.9;
- (b) slow tail: 10% of calls take 5 s; ``tail_ratio`` = rows/s / (64 / mean latency), bar 0.8;
- (c) client-bound: 100 ms a call; ``client_ratio`` = themis / a bare aiohttp client, bar 0.8;
- (e) ray.data.llm's HTTP processor in regime (c), set up for the same 64 requests in flight;
  ``raydata_llm_ratio`` = themis / ray.data.llm;
- (d) memory: the driver's peak RSS at 50,000 rows over 5,000 rows (each in a fresh process);
  ``rss_growth``, which should stay near 1 (the driver streams, it holds no rows).

The input rows are rendered and materialised before each clock starts. Rates are the server's
steady rate: replies a second over the middle 80% of a run's replies, so Ray's start-up, actor
creation and the size of output chunks do not skew them (first row and end-to-end rate are printed
beside it). The client CPU a row (bare aiohttp vs
``OpenAIEngine``, no Ray) is printed too: it depends far less than rates on other work on the
machine. Not a pytest test: figures are printed, never asserted. About 5-8 minutes on an idle
2-core machine; ``--only ac`` runs some regimes (s = server alone, e needs c). Ends with one
``RESULT ...`` line (nan for regimes not run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fakes.async_openai_server import AsyncOpenAIServer  # noqa: E402
from themis.config import OpenAIEngineConfig, RayConfig, Sampling  # noqa: E402
from themis.engines.base import request_to_row  # noqa: E402
from themis.judge.call import judge_request, single_call  # noqa: E402

CONCURRENCY = 64
RAYDATA_LLM_DEADLINE_S = 300  # its pipeline can stall on a small machine; the bench must still end
MODEL = "bench-judge"


# --- rows and bodies ------------------------------------------------------------------------------


def judge_row(i: int) -> dict[str, Any]:
    """The ``request`` column of row ``i``: a single-answer grading prompt."""
    call = single_call("open_qa", f"Question {i}: what is the capital of France?", f"Answer {i}: Paris.")
    return request_to_row(judge_request(call, Sampling(max_tokens=64)))


def request_batch(batch: Any) -> Any:
    """Ray Data UDF: ids -> (id, request) rows, built in the workers so the driver holds none."""
    import pyarrow as pa

    from themis.dataplane.tables import REQUEST

    ids = batch.column("id").to_pylist()
    return pa.table({"id": ids, "request": pa.array([judge_row(i) for i in ids], type=REQUEST)})


def input_rows(n: int) -> Any:
    """``n`` judge rows, built by Ray tasks and materialised before the clock starts, so that the
    figures measure generation rather than prompt rendering competing with it for 2 cores."""
    import ray

    ds = ray.data.range(n, override_num_blocks=max(4, n // 500))
    return ds.map_batches(request_batch, batch_format="pyarrow", num_cpus=0.5).materialize()


def body_of(row: dict[str, Any]) -> dict[str, Any]:
    """The chat-completions body a bare client sends for a request row (what the engine sends)."""
    keys = ("max_tokens", "temperature", "top_p")
    return {"model": MODEL, "messages": row["messages"], **{k: row[k] for k in keys}}


def engine_cfg(url: str) -> OpenAIEngineConfig:
    return OpenAIEngineConfig(base_url=url, model=MODEL, concurrency=CONCURRENCY, timeout_s=60, max_retries=2)


# --- the three clients -----------------------------------------------------------------------------


def bare_client(url: str, n: int, concurrency: int) -> tuple[float, float]:
    """Rows/s and CPU ms a row of a minimal aiohttp client (one session, a semaphore, POST json,
    read json)."""
    import aiohttp

    bodies = [body_of(judge_row(i)) for i in range(n)]

    async def run() -> tuple[float, float]:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            window = asyncio.Semaphore(concurrency)

            async def one(body: dict[str, Any]) -> str:
                async with window, session.post(url + "/chat/completions", json=body) as resp:
                    return (await resp.json())["choices"][0]["message"]["content"]

            start, cpu = time.perf_counter(), _cpu_s()
            await asyncio.gather(*(one(b) for b in bodies))
            return n / (time.perf_counter() - start), (_cpu_s() - cpu) / n * 1e3

    return asyncio.run(run())


def themis_run(url: str, n: int) -> dict[str, float]:
    """Stream ``n`` judge rows through ``generation.generate``; rates and failures."""
    import pyarrow.compute as pc

    from themis.dataplane.generation import EnginePass, generate

    out = generate(input_rows(n), EnginePass(name="teacher", cfg=engine_cfg(url), model=None, cache=None))
    return _consume(
        out.iter_batches(batch_format="pyarrow", batch_size=None), n, lambda b: pc.sum(pc.is_valid(b["error"])).as_py()
    )


def raydata_llm_run(url: str, n: int, actors: int) -> dict[str, float]:
    """The same rows through ``ray.data.llm``'s HTTP processor: ``actors`` x 4 batches in flight
    (Ray Data's default for an async UDF), each batch sending its rows one at a time."""
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    config = HttpRequestProcessorConfig(
        url=url + "/chat/completions",
        headers={"Authorization": "Bearer EMPTY"},
        batch_size=16,
        concurrency=(actors, actors),  # a fixed pool (an int means autoscaling from 1)
        max_retries=2,
        # 16 x 0.05 CPUs beside the pre/postprocess tasks' 0.25 each: all of them fit on 2 cores.
        http_request_stage={"num_cpus": 0.05},
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {"id": row["id"], "payload": body_of(row["request"])},
        postprocess=lambda row: {"id": row["id"], "output": row["http_response"]["choices"][0]["message"]["content"]},
        # Without these the pre/postprocess tasks ask for a whole CPU each and the job hangs on 2 cores.
        preprocess_map_kwargs={"num_cpus": 0.25},
        postprocess_map_kwargs={"num_cpus": 0.25},
    )
    # An actor runs one block at a time, 4 of its batches at once: blocks of 4 batches keep all
    # the actors busy with 4 batches each (500-row blocks would leave most actors idle).
    out = processor(input_rows(n).repartition(target_num_rows_per_block=4 * 16))
    return _consume(out.iter_batches(batch_format="pyarrow", batch_size=None), n, lambda b: 0)


def _consume(batches: Any, n: int, count_errors: Any) -> dict[str, float]:
    """Count rows and errors as they stream out; when the first came and when the last did."""
    start = time.perf_counter()
    first = None
    rows = errors = 0
    for batch in batches:
        first = first or time.perf_counter()
        rows += batch.num_rows
        errors += count_errors(batch)
    end = time.perf_counter()
    if rows != n:
        print(f"  WARNING: {rows} rows came out of {n}")
    return {"rows": rows, "errors": errors, "first_s": (first or end) - start, "wall_s": end - start}


def measured(server: AsyncOpenAIServer, run: Any) -> dict[str, float]:
    """``run()``'s figures plus the server's steady rate and most requests in flight during it."""
    server.stats(reset=True)
    out = run()
    stats = server.stats()
    return out | {"steady": stats["steady"] or float("nan"), "max_in_flight": stats["max_in_flight"]}


def _show(label: str, r: dict[str, float], limit: float | None = None) -> None:
    extra = f", limit {limit:.1f}" if limit else ""
    print(
        f"  {label}: {r['rows']:.0f} rows, {r['errors']:.0f} errors; first row after {r['first_s']:.1f} s, "
        f"wall {r['wall_s']:.1f} s ({r['rows'] / r['wall_s']:.1f} rows/s end to end); "
        f"steady {r['steady']:.1f} rows/s{extra}; at most {r['max_in_flight']} in flight"
    )


# --- regimes ---------------------------------------------------------------------------------------


def init_ray() -> None:
    import ray

    from themis.runtime import init_ray as start

    try:
        start(RayConfig(num_cpus=2, object_store_memory_mb=800, profile="small_machine"))
    except Exception as exc:  # Ray's start-up times out on a machine busy with other work: once more
        print(f"  Ray did not start ({str(exc).splitlines()[0]}); trying again")
        ray.shutdown()
        start(RayConfig(num_cpus=2, object_store_memory_mb=800, profile="small_machine"))
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False


def memory_run(url: str, n: int) -> None:
    """Child process of regime (d): one pass of ``n`` rows, then this process's peak RSS."""
    init_ray()
    r = themis_run(url, n)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    rate = r["rows"] / r["wall_s"]
    print(f"MEMORY rows={r['rows']:.0f} errors={r['errors']:.0f} rate={rate:.1f} peak_rss_mb={peak_mb:.1f}")


def peak_rss(url: str, n: int) -> float:
    """Peak RSS (MB) of a fresh driver process that streams ``n`` rows; nan if it fails twice."""
    cmd = [sys.executable, __file__, "--memory-run", str(n), "--url", url]
    for _ in range(2):  # Ray's start-up can time out on a machine busy with other work: one more try
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("MEMORY ")), None)
        if line is not None:
            break
        print(f"  the run of {n} rows failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    else:
        return float("nan")
    fields = dict(kv.split("=") for kv in line.split()[1:])
    print(
        f"  N={n}: {fields['rows']} rows, {fields['errors']} errors, {fields['rate']} rows/s end to end, "
        f"driver peak RSS {fields['peak_rss_mb']} MB"
    )
    return float(fields["peak_rss_mb"])


def engine_direct(url: str, n: int, concurrency: int) -> tuple[float, float]:
    """Rows/s and CPU ms a row of ``OpenAIEngine.agenerate`` without Ray, one row per call as the
    actor calls it."""
    from themis.engines.base import request_from_row
    from themis.engines.openai_http import OpenAIEngine

    requests = [request_from_row(judge_row(i)) for i in range(n)]

    async def run() -> tuple[float, float]:
        engine = OpenAIEngine(engine_cfg(url).model_copy(update={"concurrency": concurrency}))
        start, cpu = time.perf_counter(), _cpu_s()
        await asyncio.gather(*(engine.agenerate([q]) for q in requests))
        elapsed, cpu = time.perf_counter() - start, _cpu_s() - cpu
        await engine.aclose()
        return n / elapsed, cpu / n * 1e3

    return asyncio.run(run())


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def server_alone() -> None:
    print("Server alone (bare aiohttp client, 0 latency, 256 in flight, 10,000 rows):")
    with AsyncOpenAIServer(latency=0.0) as server:
        print(f"  {bare_client(server.base_url, 10_000, 256)[0]:.0f} rows/s (the regimes below need at most 640)")
        print(f"Client CPU a row, no Ray, 0 latency, {CONCURRENCY} in flight, 5,000 rows (less load-dependent):")
        for name, run in (("bare aiohttp", bare_client), ("OpenAIEngine", engine_direct)):
            rate, cpu_ms = run(server.base_url, 5_000, CONCURRENCY)
            print(f"  {name}: {cpu_ms:.2f} ms CPU a row ({rate:.0f} rows/s)")


def latency_bound() -> dict[str, float]:
    print("(a) latency-bound: 1 s a call, 2,000 rows")
    with AsyncOpenAIServer(latency=1.0) as server:
        a = measured(server, lambda: themis_run(server.base_url, 2_000))
    limit = CONCURRENCY / 1.0
    _show("themis", a, limit)
    ratio = a["steady"] / limit
    print(f"  ratio {ratio:.3f} (bar >= 0.9)")
    return {"ratio": ratio}


def slow_tail() -> dict[str, float]:
    print("(b) slow tail: 10% of calls take 5 s, the rest 1 s; 2,000 rows")
    with AsyncOpenAIServer(latency=1.0, tail_fraction=0.1, tail_latency=5.0) as server:
        b = measured(server, lambda: themis_run(server.base_url, 2_000))
    mean = 0.9 * 1.0 + 0.1 * 5.0
    limit = CONCURRENCY / mean
    _show("themis", b, limit)
    tail_ratio = b["steady"] / limit
    print(f"  tail_ratio {tail_ratio:.3f} (bar >= 0.8; mean latency {mean:.1f} s)")
    return {"tail_ratio": tail_ratio}


def client_bound(with_raydata_llm: bool) -> dict[str, float]:
    print("(c) client-bound: 100 ms a call, 5,000 rows")
    out = {}
    limit = CONCURRENCY / 0.1
    with AsyncOpenAIServer(latency=0.1) as server:
        bare = measured(server, lambda: {"rate": bare_client(server.base_url, 5_000, CONCURRENCY)[0]})
        print(f"  bare aiohttp client: steady {bare['steady']:.1f} rows/s, limit {limit:.0f}")
        c = measured(server, lambda: themis_run(server.base_url, 5_000))
        _show("themis", c, limit)
        out["client_ratio"] = c["steady"] / bare["steady"]
        print(f"  client_ratio {out['client_ratio']:.3f} (bar >= 0.8)")
        if with_raydata_llm:
            actors = CONCURRENCY // 4
            print(f"(e) ray.data.llm HTTP processor, same server: {actors} actors x 4 batches = {CONCURRENCY} at once")
            llm = lambda: measured(server, lambda: raydata_llm_run(server.base_url, 5_000, actors))  # noqa: E731
            e = _with_deadline(llm, RAYDATA_LLM_DEADLINE_S)
            if e is None:
                print(f"  ray.data.llm did not finish within {RAYDATA_LLM_DEADLINE_S} s; left out")
                return out
            _show("ray.data.llm", e, limit)
            out["raydata_llm_ratio"] = c["steady"] / e["steady"]
            print(f"  raydata_llm_ratio {out['raydata_llm_ratio']:.3f} (themis / ray.data.llm)")
    return out


def _with_deadline(fn: Any, seconds: float) -> Any:
    """``fn()``, or None if it has not returned within ``seconds`` (it then runs on, abandoned,
    until Ray shuts down)."""
    result: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            result.append((True, fn()))
        except Exception as exc:  # raised again in the caller's thread
            result.append((False, exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    if not result:
        return None
    ok, value = result[0]
    if not ok:
        raise value
    return value


def memory() -> dict[str, float]:
    print("(d) memory: driver peak RSS, each run in a fresh process (10 ms a call)")
    with AsyncOpenAIServer(latency=0.01) as server:
        small = peak_rss(server.base_url, 5_000)
        large = peak_rss(server.base_url, 50_000)
    print(f"  rss_growth {large / small:.3f} (50,000 rows over 5,000)")
    return {"rss_growth": large / small}


def main(only: str) -> None:
    t0 = time.perf_counter()
    print(f"OpenAIEngine through themis.dataplane.generation.generate; {CONCURRENCY} requests in flight per engine")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work here skews every figure)")
    results: dict[str, float] = {}
    if "s" in only:
        server_alone()
    if any(r in only for r in "abce"):
        init_ray()
        results |= latency_bound() if "a" in only else {}
        results |= slow_tail() if "b" in only else {}
        results |= client_bound("e" in only) if "c" in only else {}
        import ray

        ray.shutdown()  # before (d): its runs start Ray of their own
    if "d" in only:
        results |= memory()
    print(f"total {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()[0]:.1f}")
    names = ("ratio", "tail_ratio", "client_ratio", "rss_growth", "raydata_llm_ratio")
    print("RESULT " + " ".join(f"{k}={results.get(k, float('nan')):.3f}" for k in names))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Benchmark of the HTTP engine's generation path.")
    parser.add_argument("--memory-run", type=int, help="internal: one pass of N rows, then print peak RSS")
    parser.add_argument("--url", help="internal: the server for --memory-run")
    parser.add_argument("--only", default="sabcde", help="regimes to run (s = server alone; e needs c)")
    args = parser.parse_args()
    if args.memory_run:
        memory_run(args.url, args.memory_run)
    else:
        main(args.only)
