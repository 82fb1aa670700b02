"""Rate limits for an HTTP engine (``qps``, ``tokens_per_minute``), held for a whole actor pool.

A provider's limit is per key, not per process: an autoscaled pool of 4 actors that each paced
themselves to ``qps`` would send 4x the limit. So the limits live in one place, ``PoolLimits``:
inside the engine when it runs alone, or in a small named Ray actor (``SharedLimits``) that the
driver starts before the pool (``start_shared_limits``) and every engine actor of the pool finds
by name.

An engine does not ask once per request: its ``Gate`` leases a few request starts at a time (about
a quarter second's worth of ``qps``, never more than the requests waiting), so a pool of actors
costs one small actor call per few requests. Starts are wall-clock times (``time.time``), the one
clock the actors of a cluster share. Tokens spent are reported back in batches (fire and forget).

Ray is imported only inside the functions that start or find the actor.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import threading
import time
import weakref
from typing import Any, Protocol

TPM_WINDOW_S = 60.0  # the tokens-per-minute budget looks back this far (tests shorten it)
LEASE_S = 0.25  # a lease covers about this much of the qps schedule
MAX_LEASE = 16  # and never more request starts than this
FLUSH_S = 0.05  # tokens spent are sent to a shared limiter at least this often
STALE_S = 1.0  # a leased start unused this long after its time is dropped (see Gate._take)


class PoolLimits:
    """The pool's whole budget: evenly spaced starts at most ``qps`` a second, and no start while
    the tokens reported over the last ``window_s`` reach ``tokens_per_minute``."""

    def __init__(self, qps: float | None, tokens_per_minute: int | None, window_s: float = 60.0):
        self.interval = 1.0 / qps if qps else 0.0
        self.budget, self.window_s = tokens_per_minute, window_s
        self.next_start = 0.0
        self.spent: collections.deque[tuple[float, int]] = collections.deque()
        self.total = 0
        self.lock = threading.Lock()

    def lease(self, want: int, now: float | None = None) -> tuple[list[float], float]:
        """``want`` start times (``time.time`` seconds), or none and the seconds to wait before
        asking again (the token budget is spent)."""
        if want < 1:
            raise ValueError(f"a lease is for at least one start, not {want}")
        with self.lock:
            now = time.time() if now is None else now
            wait = self._budget_wait(now)
            if wait > 0:
                return [], wait
            start = max(now, self.next_start)
            starts = [start + i * self.interval for i in range(want)]
            self.next_start = starts[-1] + self.interval
            return starts, 0.0

    def record(self, tokens: int, now: float | None = None) -> None:
        """Tokens (prompt + completion) a reply cost, as the server reported them."""
        if self.budget is None or tokens <= 0:
            return
        with self.lock:
            self.spent.append((time.time() if now is None else now, tokens))
            self.total += tokens

    def _budget_wait(self, now: float) -> float:
        """0 when under budget, else the seconds until the oldest spending leaves the window."""
        if self.budget is None:
            return 0.0
        while self.spent and self.spent[0][0] <= now - self.window_s:
            self.total -= self.spent.popleft()[1]
        if self.total < self.budget:
            return 0.0
        return self.spent[0][0] + self.window_s - now + 1e-3


class Leaser(Protocol):
    """Where a gate gets its starts: a ``PoolLimits`` in this process or behind a Ray actor."""

    async def lease(self, want: int) -> tuple[list[float], float]: ...

    def record(self, tokens: int) -> None: ...


class LocalLeaser:
    """A ``PoolLimits`` in this process (an engine on its own is a pool of one)."""

    def __init__(self, limits: PoolLimits):
        self.limits = limits

    async def lease(self, want: int) -> tuple[list[float], float]:
        return self.limits.lease(want)

    def record(self, tokens: int) -> None:
        self.limits.record(tokens)


class RemoteLeaser:
    """The pool's ``SharedLimits`` actor; tokens are batched and sent without waiting for an answer."""

    def __init__(self, actor: Any):
        self.actor = actor
        self._unsent = 0
        self._flushing = False
        self._lock = threading.Lock()

    async def lease(self, want: int) -> tuple[list[float], float]:
        self._flush()  # what this actor spent counts before it is given more
        return await self.actor.lease.remote(want)

    def record(self, tokens: int) -> None:
        if tokens <= 0:
            return
        with self._lock:
            self._unsent += tokens
            if self._flushing:
                return
            self._flushing = True
        # Soon, not now: the replies finishing together in one window go in one actor call.
        asyncio.get_running_loop().call_later(FLUSH_S, self._flush)

    def _flush(self) -> None:
        with self._lock:
            tokens, self._unsent, self._flushing = self._unsent, 0, False
        if tokens:
            self.actor.record.remote(tokens)


class Gate:
    """Where an engine waits before each request start; starts are leased a few at a time."""

    def __init__(self, leaser: Leaser, qps: float | None):
        self.leaser = leaser
        # About LEASE_S of the schedule per lease: few actor calls, little reserved ahead of need.
        self.chunk = max(1, min(MAX_LEASE, round(qps * LEASE_S))) if qps else MAX_LEASE
        self.stale_s = min(STALE_S, 1.0 / qps) if qps else STALE_S
        self.starts: collections.deque[float] = collections.deque()
        self.waiting = 0
        self.lock = threading.Lock()
        # One lease at a time per event loop (an engine may be used from several loops).
        self._refills: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    async def wait(self) -> None:
        """Return at this request's start time."""
        with self.lock:
            self.waiting += 1
        try:
            while (start := self._take()) is None:
                async with self._refill_lock():
                    if self.starts:
                        continue  # another waiter's lease left some
                    await asyncio.sleep(0)  # let the requests arriving together count themselves in
                    starts, retry_in = await self.leaser.lease(min(self.waiting, self.chunk))
                    if starts:
                        with self.lock:
                            self.starts.extend(starts)
                    else:
                        await asyncio.sleep(retry_in)
        finally:
            with self.lock:
                self.waiting -= 1
        delay = start - time.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def record(self, tokens: int) -> None:
        """Report the tokens a reply cost (counts against ``tokens_per_minute``)."""
        self.leaser.record(tokens)

    def _take(self) -> float | None:
        # A start left unused well past its time (its request was cancelled) is dropped rather
        # than spent late, where it would double up with a later one.
        with self.lock:
            now = time.time()
            while self.starts and self.starts[0] < now - self.stale_s:
                self.starts.popleft()
            return self.starts.popleft() if self.starts else None

    def _refill_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self.lock:
            lock = self._refills.get(loop)
            if lock is None:
                lock = self._refills[loop] = asyncio.Lock()
            return lock


# --- the pool's actor -------------------------------------------------------------------------


class SharedLimits:
    """The Ray actor behind a pool's limits (``ray.remote`` is applied where it is started)."""

    def __init__(self, qps: float | None, tokens_per_minute: int | None, window_s: float):
        self.limits = PoolLimits(qps, tokens_per_minute, window_s)

    def lease(self, want: int) -> tuple[list[float], float]:
        return self.limits.lease(want)

    def record(self, tokens: int) -> None:
        self.limits.record(tokens)

    def ready(self) -> bool:
        return True


_STARTED: dict[str, Any] = {}  # the driver's handles, by actor name


def limiter_name(engine: str, cfg_json: str) -> str:
    """The actor name of one engine's limits: its name and a digest of its config, so a changed
    config never inherits an old budget, and two pools of the same engine share one."""
    digest = hashlib.sha256(cfg_json.encode()).hexdigest()[:12]
    return f"themis-limits-{engine}-{digest}"


def start_shared_limits(engine: str, cfg: Any, window_s: float | None = None) -> str | None:
    """Start (or find) the named actor holding ``cfg``'s ``qps`` / ``tokens_per_minute`` for the
    whole pool; its name, or None when the engine has no limits. Called on the driver, before the
    pool starts: the actor lives as long as the driver's job."""
    if not (cfg.qps or cfg.tokens_per_minute):
        return None
    import ray

    name = limiter_name(engine, cfg.model_dump_json())
    window = TPM_WINDOW_S if window_s is None else window_s
    # No CPU: it must start beside pools that hold every core, and its calls take microseconds.
    actor = ray.remote(num_cpus=0)(SharedLimits)
    handle: Any = actor.options(name=name, get_if_exists=True).remote(cfg.qps, cfg.tokens_per_minute, window)
    ray.get(handle.ready.remote())  # up before any engine looks for it, or fail here, in the driver
    _STARTED[name] = handle  # Ray ends an actor, named or not, once its owner holds no handle to it
    return name


def find_shared_limits(name: str) -> RemoteLeaser:
    """The leaser of a pool's limits actor, from inside an engine actor."""
    import ray

    return RemoteLeaser(ray.get_actor(name))
