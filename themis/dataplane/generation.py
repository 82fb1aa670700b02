"""Generation inside Ray Data: engine actor pools over streams of rows.

A row that needs the engine carries a ``request`` struct column (``tables.REQUEST``: messages,
forced format, its own sampling and seed), so one pass of an engine serves rows with different
settings. ``generate`` adds ``tables.GENERATED`` (output, error, tokens, cached, node, actor).
A row whose ``request`` is null passes through untouched: a stage can send rows it already
rejected down the same stream, and every row still leaves as an output or a reject.

The engine runs in an autoscaling actor pool (``engine.pool``: Ray Data's own
``ActorPoolStrategy(min_size, max_size)``, GPUs and CPUs per actor), so weights load once per
actor per pass. A network engine gets an async actor that runs several batches at once, and the
engine's own window keeps ``concurrency`` requests going across them with no batch barrier.
Finished calls go to the run's call cache (``call_cache``) as they complete, so a rerun after a
crash re-pays only what was in flight.

What a stage does with the generated rows (write once, count, publish outputs and rejects) is
``ledger``'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from themis.config import EngineConfig, OpenAIEngineConfig, TransformersEngineConfig, VLLMEngineConfig
from themis.dataplane.call_cache import CacheSpec, CallCache, engine_fingerprint
from themis.dataplane.ledger import LIGHT, EngineUnavailableError
from themis.dataplane.tables import GENERATED, REQUEST, to_table
from themis.engines import GenerationRequest, GenerationResult, build_engine
from themis.engines.base import request_from_row, request_to_row
from themis.engines.limits import start_shared_limits
from themis.models import ModelSource, resolve_model

# Calls that depend on answers (a judge prompt that quotes the teacher's reference answer): given a
# batch the actor just answered, the rows to answer next in the same actor, in the batch's input
# schema (null = none). Both leave together, so one pool (weights loaded once) serves both rounds.
Followup = Callable[[pa.Table], pa.Table | None]


@dataclass(frozen=True)
class EnginePass:
    """One engine as a stage uses it: its name in ``engines``, its config, where its weights come
    from (a run's export, fetched on each actor's node), and where finished calls are kept."""

    name: str
    cfg: EngineConfig
    model: ModelSource | None = None
    cache: CacheSpec | None = None
    limits: str | None = None  # the pool's shared rate limiter (an actor's name; set by generate)


def check_engine(engine: EnginePass) -> None:
    """Fail fast, in the driver, on an engine that cannot start (e.g. a missing model folder)."""
    cfg = engine.cfg
    if isinstance(cfg, TransformersEngineConfig | VLLMEngineConfig) and engine.model is None:
        resolve_model(cfg.model)


# --- the actors -------------------------------------------------------------------------------------


class _EngineWorker:
    """Shared by the sync and async actors: the engine, the cache, and row <-> request plumbing."""

    def __init__(self, engine: EnginePass, followup: Followup | None = None):
        import ray

        self.followup = followup
        # The actor fetches the model on its own node (an s3:// export is downloaded there).
        self.engine = build_engine(engine.cfg, engine.model.fetch() if engine.model else None, engine.limits)
        self.cache = CallCache(engine.cache, engine_fingerprint(engine.cfg)) if engine.cache else None
        context = ray.get_runtime_context()
        self.node, self.actor = context.get_node_id(), context.get_actor_id() or ""

    def _plan(
        self, batch: pa.Table
    ) -> tuple[list[GenerationResult | None], list[int], list[GenerationRequest], list[str]]:
        """Cached results where there are any; the indexes, requests and cache keys still to generate
        (each key is hashed once, here, and reused when the result is saved)."""
        rows = batch.column("request").to_pylist()
        results: list[GenerationResult | None] = [None] * len(rows)
        todo, requests, keys = [], [], []
        for i, row in enumerate(rows):
            if row is None:
                continue  # a row that does not need the engine passes through
            request = request_from_row(row)
            key = self.cache.key(request) if self.cache else ""
            hit = self.cache.get(key) if self.cache else None
            if hit is not None:
                results[i] = hit
            else:
                todo.append(i)
                requests.append(request)
                keys.append(key)
        return results, todo, requests, keys

    def _finish(self, batch: pa.Table, results: list[GenerationResult | None], cached: list[bool]) -> pa.Table:
        columns = {
            "output": [r.text if r and r.ok else None for r in results],
            "error": [r.error if r else None for r in results],
            "prompt_tokens": [r.prompt_tokens if r else 0 for r in results],
            "completion_tokens": [r.completion_tokens if r else 0 for r in results],
            "cached": cached,
            "node": [self.node] * len(results),
            "actor": [self.actor] * len(results),
        }
        for name, type_ in GENERATED:
            batch = batch.append_column(pa.field(name, type_), pa.array(columns[name], type=type_))
        return batch

    def _store(self, keyed: list[tuple[str, GenerationResult]]) -> None:
        if self.cache:
            self.cache.put(keyed)


class EngineActor(_EngineWorker):
    """A local engine (transformers, vLLM): one batch at a time, batched on the device."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        answered = self._answer(batch)
        more = self.followup(answered) if self.followup else None
        return answered if more is None else pa.concat_tables([answered, self._answer(more)])

    def _answer(self, batch: pa.Table) -> pa.Table:
        results, todo, requests, keys = self._plan(batch)
        cached = [r is not None for r in results]
        fresh = self.engine.generate(requests) if requests else []
        self._store(list(zip(keys, fresh)))
        for i, result in zip(todo, fresh):
            results[i] = result
        return self._finish(batch, results, cached)


class AsyncEngineActor(_EngineWorker):
    """A network engine: Ray Data runs several batches at once here, on one event loop, and all of
    them share the engine's window of requests in flight.

    A call keeps its place in the actor's window (``concurrency`` places) from the moment it is
    sent until its result is saved in the call cache, so that calls in flight plus results not yet
    saved never exceed one window: a stage killed at any moment has paid for at most that many
    calls it will pay for again. Results are saved by group commit: whichever call finishes while
    no save is running writes every result finished so far, in one file."""

    def __init__(self, engine: EnginePass, followup: Followup | None = None):
        super().__init__(engine, followup)
        cfg = engine.cfg
        self._window = cfg.concurrency if isinstance(cfg, OpenAIEngineConfig) else 1
        self._places: asyncio.Semaphore | None = None  # made on the actor's event loop
        self._saving: asyncio.Lock | None = None
        self._unsaved: list[tuple[str, GenerationResult]] = []

    async def __call__(self, batch: pa.Table) -> pa.Table:
        answered = await self._answer(batch)
        more = self.followup(answered) if self.followup else None
        return answered if more is None else pa.concat_tables([answered, await self._answer(more)])

    async def _answer(self, batch: pa.Table) -> pa.Table:
        results, todo, requests, keys = self._plan(batch)
        cached = [r is not None for r in results]
        fresh = await asyncio.gather(*(self._one(q, k) for q, k in zip(requests, keys)))
        for i, result in zip(todo, fresh):
            results[i] = result
        return self._finish(batch, results, cached)

    async def _one(self, request: GenerationRequest, key: str) -> GenerationResult:
        if self.cache is None:
            return await self._call(request)
        if self._places is None:
            self._places, self._saving = asyncio.Semaphore(self._window), asyncio.Lock()
        async with self._places:  # held until the result is saved (or known unsaveable)
            result = await self._call(request)
            if result.ok:
                self._unsaved.append((key, result))
                await self._save()
        return result

    async def _call(self, request: GenerationRequest) -> GenerationResult:
        # One row at a time through the engine's shared window: no row waits for its batch-mates.
        agenerate = getattr(self.engine, "agenerate", None)
        if agenerate is not None:
            (result,) = await agenerate([request])
        else:
            (result,) = await asyncio.to_thread(self.engine.generate, [request])
        return result

    async def _save(self) -> None:
        """Return once this call's result is saved: by this call, or by the save that was running
        when it finished (which took every result finished before it started)."""
        assert self._saving is not None
        async with self._saving:
            unsaved, self._unsaved = self._unsaved, []
            if unsaved:
                await asyncio.to_thread(self._store, unsaved)


def is_network_engine(cfg: EngineConfig) -> bool:
    return isinstance(cfg, OpenAIEngineConfig)


# Batches an HTTP actor works on at once. Ray runs one call of an actor at a time unless told
# otherwise, and a batch ends with its slowest row: with several batches in flight the engine's
# window stays full while one of them waits on a straggler (measured: 8 keeps a 10% tail of 5 s
# calls within 0.8 of the latency bound, one batch at a time reaches 0.5-0.7).
HTTP_BATCHES_IN_FLIGHT = 8


@dataclass(frozen=True)
class PoolPlan:
    """How an engine's actor pool runs: actors (min, max), rows per call, resources per actor."""

    min_actors: int
    max_actors: int
    batch_size: int
    num_cpus: float
    num_gpus: float
    calls_per_actor: int = 1

    def map_batches_args(self) -> dict[str, Any]:
        """``map_batches`` arguments: Ray Data's own autoscaling actor pool."""
        from ray.data import ActorPoolStrategy

        compute = ActorPoolStrategy(
            min_size=self.min_actors,
            max_size=self.max_actors,
            max_concurrent_calls_per_actor=self.calls_per_actor if self.calls_per_actor > 1 else None,
            # No batches queued behind the running ones: an actor that starts first does not claim
            # the work of actors still starting.
            max_tasks_in_flight_per_actor=self.calls_per_actor if self.calls_per_actor > 1 else None,
        )
        return {"compute": compute, "batch_size": self.batch_size, "num_cpus": self.num_cpus, "num_gpus": self.num_gpus}


def cluster_gpus() -> float:
    """GPUs the connected Ray cluster has, or may add: what a device of 'auto' resolves against. An
    autoscaling cluster (KubeRay's GPU workers, min 0) may have none up while the driver plans;
    its autoscaler's config says how many it can start, which Ray Train and Ray Data read too."""
    import ray
    from ray._private.state import state

    most = state.get_max_resources_from_cluster_config() or {}  # None without an autoscaler
    return max(float(ray.cluster_resources().get("GPU", 0)), float(most.get("GPU", 0)))


def local_model_gpus(device: str, gpus_per_actor: float | None, gpus_in_cluster: float | None) -> float:
    """GPUs one actor of a local model (the transformers engine, the IFD scorer) reserves: the
    pool's ``gpus_per_actor`` where set; else one for a 'cuda' device, and for 'auto' one when the
    cluster has GPUs (``gpus_in_cluster``; None = ask the connected Ray). The actor then runs on a
    GPU exactly when Ray gave it one (``engines.hf``)."""
    if gpus_per_actor is not None:
        return gpus_per_actor
    if device == "auto":
        return 1 if (cluster_gpus() if gpus_in_cluster is None else gpus_in_cluster) > 0 else 0
    return 1 if device.startswith("cuda") else 0


def pool_plan(cfg: EngineConfig, gpus_in_cluster: float | None = None) -> PoolPlan:
    """The actor pool of an engine: its config's ``pool``, with each engine kind's defaults; a
    device of 'auto' counts the GPUs in the cluster (``gpus_in_cluster``, else asked of Ray)."""
    pool = cfg.pool
    calls = 1
    if isinstance(cfg, OpenAIEngineConfig):
        batch = pool.batch_size or cfg.concurrency
        cpus, gpus, calls = pool.cpus_per_actor or 0.25, pool.gpus_per_actor or 0, HTTP_BATCHES_IN_FLIGHT
    elif isinstance(cfg, VLLMEngineConfig):
        batch = pool.batch_size or cfg.batch_size
        cpus = pool.cpus_per_actor or 1
        gpus = cfg.tensor_parallel_size if pool.gpus_per_actor is None else pool.gpus_per_actor
    else:
        # A local model decodes a batch in about the time of one row (CPU decoding reads every weight
        # each step), and it batches rows by sampling settings: hand it several batches' worth at
        # once, so that rows of different kinds or answer models still fill whole batches.
        batch = pool.batch_size or 4 * cfg.batch_size
        # A local model gets the cores its torch threads use (Ray also sets OMP_NUM_THREADS from this).
        cpus = pool.cpus_per_actor or cfg.num_threads or 1
        gpus = local_model_gpus(cfg.device, pool.gpus_per_actor, gpus_in_cluster)
    return PoolPlan(pool.min_actors, pool.max_actors, batch, cpus, gpus, calls)


def generate(ds: Any, engine: EnginePass, followup: Followup | None = None) -> Any:
    """``ds`` with every row that has a ``request`` answered by ``engine`` (lazy, streaming);
    ``followup`` adds, per batch, rows planned from its answers and answered by the same actor."""
    actor = AsyncEngineActor if is_network_engine(engine.cfg) else EngineActor
    if is_network_engine(engine.cfg):  # qps and tokens_per_minute hold for the whole pool
        engine = replace(engine, limits=start_shared_limits(engine.name, engine.cfg))
    plan = pool_plan(engine.cfg)
    check_room_for_tasks(engine.name, plan)
    if plan.max_actors > 1 or plan.calls_per_actor > 1:
        # One input file is one block, and a block is one call of one actor: cut the stream into
        # batch-sized blocks (streaming, no shuffle) so that every actor of the pool, and every
        # concurrent call of an HTTP actor, gets work, and results leave a batch at a time.
        # Ray runs this step as 1-CPU tasks: a pool must leave a CPU free for it.
        ds = ds.repartition(target_num_rows_per_block=plan.batch_size)
    args = plan.map_batches_args()
    return ds.map_batches(
        actor, fn_constructor_kwargs={"engine": engine, "followup": followup}, batch_format="pyarrow", **args
    )


def check_room_for_tasks(name: str, plan: PoolPlan) -> None:
    """``check_room`` for one pool (a stage with a single engine)."""
    check_room({name: plan})


def check_room(plans: dict[str, PoolPlan]) -> None:
    """Refuse pools that a one-machine Ray cannot start together while keeping a whole CPU for Ray
    Data's own 1-CPU tasks (file listing, repartition): every pool of a stage waits for its first
    actors before rows flow, so a stage that cannot place them all would wait forever, silently."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) != 1:
        return  # a cluster: other nodes (or nodes still to come) have room
    have = nodes[0].get("Resources", {})
    cpus = sum(p.min_actors * p.num_cpus for p in plans.values())
    gpus = sum(p.min_actors * p.num_gpus for p in plans.values())
    if have.get("CPU", 0) - cpus >= 1 and gpus <= have.get("GPU", 0):
        return
    wants = "; ".join(
        f"engine {name!r}: {p.min_actors} actor(s) x {p.num_cpus:g} CPU"
        + (f" + {p.num_gpus:g} GPU" if p.num_gpus else "")
        for name, p in sorted(plans.items())
    )
    raise ValueError(
        f"the engine pools of this stage cannot all start on this machine, and the stage would hang: {wants}; "
        f"together {cpus:g} CPU and {gpus:g} GPU, plus 1 CPU for Ray Data's own tasks; this Ray has "
        f"{have.get('CPU', 0):g} CPU and {have.get('GPU', 0):g} GPU. Lower pool.cpus_per_actor or pool.min_actors "
        "(a local model's torch threads follow num_threads, not the reservation), use one engine for the "
        "pool, or raise ray.num_cpus"
    )


def generate_requests(requests: list[GenerationRequest], engine: EnginePass) -> list[GenerationResult]:
    """Answer a list of requests through an engine pool; results in order (for in-memory callers
    such as evaluate). Raises ``EngineUnavailableError`` when every call failed."""
    import ray

    if not requests:
        return []
    check_engine(engine)
    schema = pa.schema([("n", pa.int64()), ("request", REQUEST)])
    table = to_table(({"n": n, "request": request_to_row(r)} for n, r in enumerate(requests)), schema)
    results: list[GenerationResult | None] = [None] * len(requests)
    out = generate(ray.data.from_arrow(table), engine)
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=1024):
        for n, text, error, p, c in zip(
            *(batch.column(k).to_pylist() for k in ("n", "output", "error", "prompt_tokens", "completion_tokens"))
        ):
            results[n] = GenerationResult(text=text or "", error=error, prompt_tokens=p, completion_tokens=c)
    final = [r or GenerationResult(error="no result") for r in results]
    if all(not r.ok for r in final):
        raise EngineUnavailableError(
            f"all {len(final)} calls to engine {engine.name!r} failed; first: {final[0].error}"
        )
    return final


def generate_by_engine(planned: Any, engines: dict[str, EnginePass]) -> Any:
    """Each row through the engine its ``engine`` column names, one pass (one pool) per engine;
    rows without an engine pass through with empty generation columns."""
    names = sorted(engines)
    check_room({n: pool_plan(engines[n].cfg) for n in names})  # all pools run at once
    if len(names) == 1:
        return generate(planned, engines[names[0]])  # rows without a request pass through it
    parts = [generate(_where_engine(planned, n), engines[n]) for n in names]
    parts.append(_where_engine(planned, None).map_batches(_add_empty_generation, batch_format="pyarrow", **LIGHT))
    return parts[0].union(*parts[1:])


def _where_engine(ds: Any, name: str | None) -> Any:
    def keep(batch: pa.Table) -> pa.Table:
        column = batch.column("engine")
        return batch.filter(pc.is_null(column) if name is None else pc.equal(column, name))

    return ds.map_batches(keep, batch_format="pyarrow", **LIGHT)


def _add_empty_generation(batch: pa.Table) -> pa.Table:
    n = batch.num_rows
    empty = {"prompt_tokens": 0, "completion_tokens": 0, "cached": False}
    for name, type_ in GENERATED:
        batch = batch.append_column(pa.field(name, type_), pa.array([empty.get(name)] * n, type=type_))
    return batch
