"""The judge's Prometheus metrics, through Ray Serve's metrics API (``ray.serve.metrics``): Serve tags
each with its deployment, replica and application, and Ray's metrics endpoint exports them."""

import time
from contextlib import contextmanager

from themis.judge_api import ApiError, JudgeResponse


class JudgeMetrics:
    """Prometheus metrics through Ray Serve's metrics API (tagged with deployment and replica)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter(
            "themis_judge_requests",
            description="Requests by route, kind and status.",
            tag_keys=("route", "kind", "status"),
        )
        self.latency = Histogram(
            "themis_judge_latency_ms",
            description="Request latency by route and kind.",
            boundaries=[10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000],
            tag_keys=("route", "kind"),
        )
        self.verdicts = Counter(
            "themis_judge_verdicts", description="Verdicts by kind and value.", tag_keys=("kind", "verdict")
        )
        self.parse_failures = Counter(
            "themis_judge_parse_failures", description="Outputs without a verdict.", tag_keys=("kind",)
        )
        self.disagreements = Counter(
            "themis_judge_dual_order_disagreements", description="Pairs whose two orders disagree."
        )
        self.batch_sizes = Histogram(
            "themis_judge_engine_batch_size",
            description="Generations per engine call (how full batching keeps the engine).",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
        )

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
