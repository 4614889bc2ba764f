"""What the `monitor` flow does besides Prefect glue: read a server's ``GET /v1/monitor``, decide
which Prefect events it calls for, emit them and summarise what it saw.

Two events, on one resource per served model (``transferkit.server.<model name>``):

- ``transferkit.drift.detected`` when the server's drift test says the inputs moved away from the
  model's reference (payload: the ``drift`` and ``model`` blocks as the server sent them);
- ``transferkit.labels.ready`` when the review queue holds at least ``min_new_labels`` labelled
  images (payload: the ``review_queue`` and ``model`` blocks and the threshold).

The `nightly-retrain` deployments' triggers (prefect.yaml) react to them, at most once a day per
model and event (docs/orchestration.md, "Retraining on events"). The monitor itself keeps no
state: it reports what it sees on every run, and the trigger's window absorbs the repeats.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, ValidationError

from transferkit.errors import ConfigError, TransferkitError
from transferkit.orchestration import TransientError

DRIFT_DETECTED = "transferkit.drift.detected"
LABELS_READY = "transferkit.labels.ready"
EVENTS = (DRIFT_DETECTED, LABELS_READY)
RESOURCE_PREFIX = "transferkit.server."
MONITOR_PATH = "/v1/monitor"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MIN_NEW_LABELS = 50


class MonitorUnreachable(TransientError):
    """The server did not answer at all (refused, timed out, dropped): may pass on retry."""


class MonitorError(TransferkitError):
    """The server answered, but not with a monitor snapshot: retrying does not help."""


class _Model(BaseModel):
    name: str
    version: str | None = None


class _Drift(BaseModel):
    model_config = ConfigDict(extra="allow")
    available: StrictBool = False
    detected: StrictBool


class _ReviewQueue(BaseModel):
    model_config = ConfigDict(extra="allow")
    labelled: StrictInt = 0  # labels in the drop not yet ingested; a server without --review-drop counts 0


class _Snapshot(BaseModel):
    """The fields of ``GET /v1/monitor`` the monitor decides on; the rest is passed through."""

    model_config = ConfigDict(extra="allow")
    model: _Model
    drift: _Drift
    review_queue: _ReviewQueue = _ReviewQueue()


@dataclass(frozen=True)
class MonitorEvent:
    """A Prefect event to emit: its name, primary resource and payload."""

    event: str
    resource: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)


def monitor_url(base_url: str) -> str:
    return base_url.rstrip("/") + MONITOR_PATH


def fetch_monitor(base_url: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """``GET <base_url>/v1/monitor``, checked: a JSON object with a model name and a drift verdict.

    No answer at all raises ``MonitorUnreachable`` (transient); a non-200, non-JSON or
    wrongly-shaped answer raises ``MonitorError``. Each message names the URL, what went wrong
    and what to do.
    """
    url = monitor_url(base_url)
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.TransportError as error:
        raise MonitorUnreachable(
            f"the transferkit server at {url} did not answer ({type(error).__name__}: {error or 'no detail'}): "
            "start it (`transferkit serve --model ...`) or pass the flow parameter `url` of a running one"
        ) from None
    if response.status_code != 200:
        try:
            detail = str(response.json()["error"])
        except (ValueError, KeyError, TypeError):
            detail = response.text[:200].strip() or "no body"
        hint = (
            "this server has no monitoring route: run a transferkit version that serves /v1/monitor, "
            "or check that `url` is the server's base URL (no path)"
            if response.status_code == 404
            else "see the server's log; the monitor reads the route again on its next run"
        )
        raise MonitorError(f"{url} answered HTTP {response.status_code} ({detail}): {hint}")
    try:
        data = response.json()
    except ValueError:
        kind = response.headers.get("content-type", "no content type")
        raise MonitorError(
            f"{url} answered HTTP 200 but not JSON ({kind}: {response.text[:80]!r}): "
            "is `url` the base URL of a transferkit server?"
        ) from None
    check_snapshot(data, url)
    return data


def check_snapshot(data: Any, url: str = MONITOR_PATH) -> None:
    """Refuse JSON that is not a monitor snapshot, naming the first field that is wrong."""
    try:
        _Snapshot.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the body"
        raise MonitorError(
            f"{url} answered JSON that is not a monitor snapshot ({where}: {first['msg']}): "
            "is `url` a transferkit server, and of a version whose /v1/monitor this flow knows?"
        ) from None


def server_resource(model: dict[str, Any]) -> dict[str, str]:
    """The events' primary resource: one per served model name (replicas of a model share it)."""
    resource = {"prefect.resource.id": RESOURCE_PREFIX + model["name"], "prefect.resource.name": model["name"]}
    if model.get("version") is not None:
        resource["transferkit.model.version"] = str(model["version"])
    return resource


def labelled_count(snapshot: dict[str, Any]) -> int:
    return int((snapshot.get("review_queue") or {}).get("labelled", 0))


def events_for(snapshot: dict[str, Any], min_new_labels: int = DEFAULT_MIN_NEW_LABELS) -> list[MonitorEvent]:
    """The events a checked snapshot calls for: drift detected, enough new labels, both or none."""
    if min_new_labels < 1:
        raise ConfigError(f"min_new_labels must be at least 1, got {min_new_labels}")
    model = snapshot["model"]
    resource = server_resource(model)
    events = []
    if snapshot["drift"].get("detected") is True:
        events.append(MonitorEvent(DRIFT_DETECTED, resource, {"drift": snapshot["drift"], "model": model}))
    labelled = labelled_count(snapshot)
    if labelled >= min_new_labels:
        payload = {"review_queue": snapshot.get("review_queue") or {}, "model": model, "min_new_labels": min_new_labels}
        events.append(MonitorEvent(LABELS_READY, resource, payload))
    return events


def emit(events: list[MonitorEvent]) -> list[str]:
    """Send the events to the Prefect API this process reports to; returns their ids.

    Inside a flow run Prefect relates them to the run (and its deployment) and flushes them when
    the run ends; elsewhere call ``prefect.events.worker.EventsWorker.drain_all()`` to wait for them.
    """
    from prefect.events import emit_event

    sent = []
    for item in events:
        event = emit_event(item.event, resource=item.resource, payload=item.payload)
        if event is not None:
            sent.append(str(event.id))
    return sent


def summary(base_url: str, snapshot: dict[str, Any], events: list[MonitorEvent], min_new_labels: int) -> dict[str, Any]:
    """What the flow returns: the server, the model, the drift verdict, the labels and the events."""
    drift = snapshot["drift"]
    return {
        "url": monitor_url(base_url),
        "model": snapshot["model"]["name"],
        "version": snapshot["model"].get("version"),
        "drift_available": bool(drift.get("available")),
        "drift_detected": drift.get("detected") is True,
        "drift_on": drift.get("on"),
        "p_value": drift.get("p_value"),
        "predictions": (snapshot.get("predictions") or {}).get("total"),
        "labelled": labelled_count(snapshot),
        "min_new_labels": min_new_labels,
        "events": [item.event for item in events],
    }


def summary_markdown(result: dict[str, Any], snapshot: dict[str, Any]) -> str:
    """The flow's artifact: the summary as a table, then the drift block's details."""
    drift = snapshot["drift"]
    if not drift.get("available"):
        verdict = f"drift test not available: {drift.get('reason') or 'no reason given'}"
    elif result["drift_detected"]:
        verdict = f"**drift detected** on `{drift.get('on')}`"
    else:
        verdict = f"no drift on `{drift.get('on')}`"
    rows = [
        ("server", f"`{result['url']}`"),
        ("model", f"`{result['model']}` version `{result['version']}`"),
        ("drift", verdict),
        (
            "test",
            f"{drift.get('test')}: statistic {drift.get('statistic')}, p-value {drift.get('p_value')} "
            f"(alpha {drift.get('alpha')}), window {drift.get('window')} of {drift.get('window_size')} "
            f"(min {drift.get('min_samples')}), reference `{drift.get('reference')}`",
        ),
        ("predictions", str(result["predictions"])),
        ("labelled", f"{result['labelled']} (events from {result['min_new_labels']})"),
        ("events", ", ".join(f"`{name}`" for name in result["events"]) or "none"),
    ]
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    return f"## Monitor: {result['model']}\n\n| | |\n|---|---|\n{table}\n"
