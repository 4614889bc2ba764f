"""Prometheus metrics of one server process, plus the ASGI middleware that records requests.

Each app gets its own ``CollectorRegistry`` so several apps (tests, benchmarks) can live in one
process. With ``--workers N`` every worker exports its own numbers; scrape each or run one
worker per GPU.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
disable_created_metrics()  # the *_created series only add noise to every scrape


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "transferkit_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "transferkit_request_latency_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "transferkit_batch_size", "Images per ONNX Runtime call", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge(
            "transferkit_queue_depth", "Images waiting for or in inference", registry=self.registry
        )
        self.images = Counter("transferkit_images", "Images classified", registry=self.registry)
        self.reloads = Counter(
            "transferkit_model_reloads", "Model reload attempts by outcome", ["outcome"], registry=self.registry
        )
        self.model_info = Gauge(
            "transferkit_model_info", "The served model (value 1)", ["name", "version"], registry=self.registry
        )

    def serving(self, name: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version).set(1)


class RequestMetricsMiddleware:
    """Counts every HTTP response by route template and status, and times it."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}
        start = time.perf_counter()

        async def record_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = _route_template(scope)
            self.metrics.requests.labels(route=route, status=str(status["code"])).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - start)


def _route_template(scope: dict[str, Any]) -> str:
    """The matched route's path template (bounded label values), or 'unmatched'."""
    route = scope.get("route")
    return getattr(route, "path", "unmatched")
