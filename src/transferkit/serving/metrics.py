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
# Top-class probability: finest where decisions are made (a confident model lives above 0.9).
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# ood_score's scale depends on the method the export used (metadata ``ood``), so the buckets are
# geometric over a wide range rather than tuned to one model: a reload must not need new buckets.
OOD_BUCKETS = tuple(2.0**k for k in range(-8, 17))  # knn: 0..2; mahalanobis: squared, in the thousands
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

        self._add_monitoring()

    def _add_monitoring(self) -> None:
        """What the monitor thread records (serving/monitor.py): what the model answered, drift, and what
        monitoring itself could not do (records dropped, files not written)."""
        registry = self.registry
        self.top_probability = Histogram(
            "transferkit_top_probability",
            "Top-class probability of each classified image",
            buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )
        self.ood_score = Histogram(
            "transferkit_ood_score",
            "ood_score output of each image (models with that output only)",
            buckets=OOD_BUCKETS,
            registry=registry,
        )
        self.predicted = Counter(
            "transferkit_predictions", "Classified images by predicted class", ["label"], registry=registry
        )
        self.decisions = Counter(
            "transferkit_decisions",
            "Decisions by name and, for review, its reason (empty otherwise)",
            ["decision", "reason"],
            registry=registry,
        )
        self.drift_statistic = Gauge(
            "transferkit_drift_statistic", "Two-sample KS statistic, recent window vs reference", registry=registry
        )
        self.drift_p_value = Gauge("transferkit_drift_p_value", "p-value of the drift test", registry=registry)
        self.drift_detected = Gauge("transferkit_drift_detected", "1 when drift is detected, else 0", registry=registry)
        self.monitor_dropped = Counter(
            "transferkit_monitor_dropped", "Monitoring records dropped because the queue was full", registry=registry
        )
        self.monitor_errors = Counter(
            "transferkit_monitor_errors", "Monitoring writes that failed, by what", ["what"], registry=registry
        )
        self.review_queue_images = Gauge(
            "transferkit_review_queue_images", "Images in the review queue", registry=registry
        )
        self.review_queue_bytes = Gauge(
            "transferkit_review_queue_bytes", "Bytes in the review queue", registry=registry
        )
        for what in ("prediction_log", "review_queue"):  # both series exist from the first scrape
            self.monitor_errors.labels(what=what)

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
