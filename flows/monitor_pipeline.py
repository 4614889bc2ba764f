"""Prefect flow `monitor`: read a transferkit server's ``GET /v1/monitor`` and emit the events the
`nightly-retrain` deployments' triggers react to (``transferkit.drift.detected``,
``transferkit.labels.ready``).

Thin on purpose: reading, checking and deciding are `transferkit.monitoring_events` functions.
Only a server that does not answer at all is retried (twice, a few seconds apart); a non-200 or
non-JSON answer fails the run at once, its message naming the URL and what to do. Deployed every
5 minutes (prefect.yaml, `monitor`); the triggers' window, not this flow, keeps a lasting drift
from retraining more than once a day (docs/orchestration.md, "Retraining on events").
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.retries import retry_transient
from transferkit import monitoring_events
from transferkit.monitoring_events import DEFAULT_MIN_NEW_LABELS, DEFAULT_URL


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def read_monitor(url: str, timeout_s: float) -> dict[str, Any]:
    return monitoring_events.fetch_monitor(url, timeout_s)


@task(cache_policy=NO_CACHE)
def emit_events(events: list[monitoring_events.MonitorEvent]) -> list[str]:
    for item in events:
        get_run_logger().info("emitting %s for %s", item.event, item.resource["prefect.resource.id"])
    return monitoring_events.emit(events)


@flow(name="monitor", log_prints=True)
def monitor_pipeline(
    url: str = DEFAULT_URL, min_new_labels: int = DEFAULT_MIN_NEW_LABELS, timeout_s: float = 10.0
) -> dict[str, Any]:
    snapshot = read_monitor(url, timeout_s)
    events = monitoring_events.events_for(snapshot, min_new_labels)
    emit_events(events)
    result = monitoring_events.summary(url, snapshot, events, min_new_labels)
    create_markdown_artifact(
        key="monitor-snapshot",
        markdown=monitoring_events.summary_markdown(result, snapshot),
        description=f"what {result['url']} reported",
    )
    return result
