"""The judge's Prometheus metrics, through Ray Serve's metrics API (``ray.serve.metrics``): Serve tags
each with its deployment, replica and application, and Ray's metrics endpoint exports them.

``themis_judge_responses`` counts every HTTP answer of a replica by route and status, refusals
included: 401 (key), 413 (body), 422 (schema), 400s, and the replica's own 503 (busy), which its
routes never see (``StatusCounter`` wraps the whole app, outside the guard)."""

import asyncio
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

from themis.serving.errors import ApiError
from themis.serving.models import JudgeResponse


def _tags(*keys: str) -> Any:
    """Tag keys as Ray's metrics take them (any number; Ray's annotation says exactly one)."""
    return keys


OTHER_ROUTE = "other"  # any path that is not a route, so a scanner cannot grow the label set


class JudgeMetrics:
    """Prometheus metrics through Ray Serve's metrics API (tagged with deployment and replica)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.responses = Counter(
            "themis_judge_responses",
            description="Every HTTP answer by route and status, refusals (401/413/422/400/503) included.",
            tag_keys=_tags("route", "status"),
        )
        self.requests = Counter(
            "themis_judge_requests",
            description="Requests by route, kind and status.",
            tag_keys=_tags("route", "kind", "status"),
        )
        self.latency = Histogram(
            "themis_judge_latency_ms",
            description="Request latency by route and kind.",
            boundaries=[10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000],
            tag_keys=_tags("route", "kind"),
        )
        self.verdicts = Counter(
            "themis_judge_verdicts", description="Verdicts by kind and value.", tag_keys=_tags("kind", "verdict")
        )
        self.parse_failures = Counter(
            "themis_judge_parse_failures",
            description="Outputs without a verdict.",
            tag_keys=_tags(
                "kind",
            ),
        )
        self.disagreements = Counter(
            "themis_judge_dual_order_disagreements", description="Pairs whose two orders disagree."
        )
        self.batch_sizes = Histogram(
            "themis_judge_engine_batch_size",
            description="Generations per engine call (how full batching keeps the engine).",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
        )

    def response(self, route: str, status: int) -> None:
        self.responses.inc(tags={"route": route, "status": str(status)})

    def batch_size(self, size: int) -> None:
        self.batch_sizes.observe(size)

    @contextmanager
    def observe(self, route: str, kind: str):
        """Count the request and its latency, with its status (an ApiError's, or 500)."""
        start, status = time.monotonic(), "200"
        try:
            yield
        except ApiError as exc:
            status = str(exc.status)
            raise
        except Exception:
            status = "500"
            raise
        finally:
            tags = {"route": route, "kind": kind}
            self.requests.inc(tags=tags | {"status": status})
            self.latency.observe((time.monotonic() - start) * 1000, tags=tags)

    def verdict(self, out: JudgeResponse) -> None:
        if not out.parsed:
            self.parse_failures.inc(tags={"kind": out.kind})
            return
        value = out.winner if out.kind == "pairwise" else str(out.score)
        self.verdicts.inc(tags={"kind": out.kind, "verdict": str(value)})
        if out.consistent is False:
            self.disagreements.inc()


class StatusCounter:
    """ASGI middleware: ``metrics().response(route, status)`` for every answer (500 for an exception
    that escapes). ``metrics`` is read per request: the replica sets it after the app exists."""

    def __init__(self, app: Any, metrics: Callable[[], JudgeMetrics | None], routes: frozenset[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        metrics = self.metrics()
        if scope["type"] != "http" or metrics is None:
            return await self.app(scope, receive, send)
        status = 0

        async def seen(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, seen)
        except BaseException as exc:
            # Nothing answered: the client left (499, as nginx counts it), or an error escaped (500).
            status = status or (499 if isinstance(exc, asyncio.CancelledError) else 500)
            raise
        finally:
            route = scope["path"] if scope["path"] in self.routes else OTHER_ROUTE
            metrics.response(route, status)
