"""The `monitor` flow and the retrain it triggers, against real servers only.

- what a snapshot of ``GET /v1/monitor`` calls for (pure functions on real snapshot JSON);
- a server that is not there, or a real HTTP server that is not a transferkit one (the session's
  Prefect server): a failed run whose message names the URL and the fix;
- the events reach the session's real Prefect server (the test harness, which runs the triggers
  and actions services), and `nightly-retrain`, deployed by `prefect deploy` from the project's
  prefect.yaml with its triggers, gets a flow run from a drift event, one from a labels event,
  and no second one for a repeated drift inside the trigger's window;
- end to end (once the server serves /v1/monitor): a real `transferkit serve` fed shifted
  images -> the monitor flow -> the event -> a `nightly-retrain` run.
"""

from __future__ import annotations

import copy
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import REPO, run_tool
from transferkit import monitoring_events
from transferkit.errors import ConfigError
from transferkit.monitoring_events import DRIFT_DETECTED, LABELS_READY, MonitorError

# A /v1/monitor answer as the server gives it (the shape agreed for issue 28), drift detected.
SNAPSHOT: dict[str, Any] = {
    "model": {"name": "elpv-defects", "version": "3"},
    "drift": {
        "available": True,
        "detected": True,
        "test": "ks_2samp",
        "on": "ood_score",
        "statistic": 0.61,
        "p_value": 1.2e-9,
        "window": 200,
        "window_size": 200,
        "min_samples": 100,
        "alpha": 0.01,
        "reference": "val",
        "reason": None,
    },
    "predictions": {"total": 1250, "by_class": {"defective": 400}, "by_decision": {}, "by_reason": {}},
    "review_queue": {
        "enabled": True,
        "count": 12,
        "bytes": 90000,
        "max_count": 1000,
        "max_bytes": 536870912,
        "labelled": 0,
    },
    "prediction_log": {"enabled": False},
    "dropped": 0,
    "errors": {},
}


def snapshot(**blocks: dict[str, Any]) -> dict[str, Any]:
    """SNAPSHOT with some fields of its blocks replaced: ``snapshot(drift={"detected": False})``."""
    data = copy.deepcopy(SNAPSHOT)
    for block, fields in blocks.items():
        data[block].update(fields)
    return data


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # closed again: nothing listens there


# What a snapshot calls for.


def test_detected_drift_calls_for_one_drift_event_on_the_models_resource() -> None:
    (event,) = monitoring_events.events_for(SNAPSHOT, min_new_labels=50)
    assert event.event == DRIFT_DETECTED == "transferkit.drift.detected"
    assert event.resource == {
        "prefect.resource.id": "transferkit.server.elpv-defects",
        "prefect.resource.name": "elpv-defects",
        "transferkit.model.version": "3",
    }
    assert event.payload == {"drift": SNAPSHOT["drift"], "model": SNAPSHOT["model"]}


@pytest.mark.parametrize(
    "drift",
    [
        {"detected": False},
        {"available": False, "detected": False, "on": None, "p_value": None, "reason": "model has no drift_reference"},
    ],
    ids=["no-drift", "no-reference"],
)
def test_no_drift_and_few_labels_call_for_nothing(drift: dict[str, Any]) -> None:
    assert monitoring_events.events_for(snapshot(drift=drift), min_new_labels=50) == []


def test_enough_labels_call_for_a_labels_event_and_a_missing_count_is_zero() -> None:
    quiet = {"detected": False}
    assert monitoring_events.events_for(snapshot(drift=quiet, review_queue={"labelled": 49}), 50) == []
    (event,) = monitoring_events.events_for(snapshot(drift=quiet, review_queue={"labelled": 50}), 50)
    assert event.event == LABELS_READY == "transferkit.labels.ready"
    assert event.resource["prefect.resource.id"] == "transferkit.server.elpv-defects"
    assert event.payload["review_queue"]["labelled"] == 50 and event.payload["min_new_labels"] == 50
    both = monitoring_events.events_for(snapshot(review_queue={"labelled": 80}), 50)
    assert [e.event for e in both] == [DRIFT_DETECTED, LABELS_READY]

    older = snapshot(drift=quiet)
    del older["review_queue"]["labelled"]  # a server from before labelling
    monitoring_events.check_snapshot(older)
    assert monitoring_events.labelled_count(older) == 0
    assert monitoring_events.events_for(older, 1) == []
    with pytest.raises(ConfigError, match="min_new_labels must be at least 1"):
        monitoring_events.events_for(older, 0)


def test_an_unversioned_model_has_no_version_label_and_the_summary_says_what_was_seen() -> None:
    data = snapshot(model={"version": None})
    (event,) = monitoring_events.events_for(data, 50)
    assert "transferkit.model.version" not in event.resource
    result = monitoring_events.summary("http://127.0.0.1:8000/", data, [event], 50)
    assert result == {
        "url": "http://127.0.0.1:8000/v1/monitor",
        "model": "elpv-defects",
        "version": None,
        "drift_available": True,
        "drift_detected": True,
        "drift_on": "ood_score",
        "p_value": 1.2e-9,
        "predictions": 1250,
        "labelled": 0,
        "min_new_labels": 50,
        "events": [DRIFT_DETECTED],
    }
    markdown = monitoring_events.summary_markdown(result, data)
    assert "**drift detected** on `ood_score`" in markdown and "`transferkit.drift.detected`" in markdown


@pytest.mark.parametrize(
    ("broken", "field"),
    [
        ({"model": {"version": "1"}}, "model.name"),
        ({"drift": {"available": True, "detected": "yes"}}, "drift.detected"),
        ({"review_queue": {"labelled": "many"}}, "review_queue.labelled"),
    ],
)
def test_json_that_is_not_a_snapshot_is_refused_naming_the_field(broken: dict[str, Any], field: str) -> None:
    with pytest.raises(MonitorError, match=rf"not a monitor snapshot \({field}: .*transferkit server"):
        monitoring_events.check_snapshot({**SNAPSHOT, **broken}, "http://host/v1/monitor")
    with pytest.raises(MonitorError, match=r"\(the body: "):
        monitoring_events.check_snapshot([SNAPSHOT])


# The flow against servers that do not give a snapshot.


def test_a_server_that_does_not_answer_fails_the_run_after_two_retries_naming_url_and_fix(harness) -> None:
    from flows.monitor_pipeline import monitor_pipeline
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    url = closed_port_url()
    state = monitor_pipeline(url=url, timeout_s=2.0, return_state=True)
    assert state.is_failed()
    assert f"the transferkit server at {url}/v1/monitor did not answer (ConnectError" in state.message
    assert "start it (`transferkit serve --model ...`) or pass the flow parameter `url`" in state.message
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    (read,) = [run for run in runs if run.task_key.startswith("read_monitor")]
    assert read.run_count == 3  # connection errors are retried twice


def test_a_server_that_is_not_transferkit_fails_the_run_at_once(harness) -> None:
    """The session's Prefect server is a real HTTP server without /v1/monitor: a 404, no retry."""
    from flows.monitor_pipeline import monitor_pipeline
    from prefect.settings import PREFECT_API_URL

    root = str(PREFECT_API_URL.value()).removesuffix("/api")
    started = time.monotonic()
    state = monitor_pipeline(url=root, return_state=True)
    assert state.is_failed()
    assert f"{root}/v1/monitor answered HTTP 404" in state.message
    assert "run a transferkit version that serves /v1/monitor" in state.message
    assert time.monotonic() - started < 2 * 2  # not retried: the retry delay is 2 s


# Events on a real Prefect server, and the retrain they trigger.


def drain_events() -> None:
    """Wait until this process's Prefect events are sent (a flow run does this when it ends)."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=90)  # seconds when idle; the bound is for a loaded 2-core machine


def wait_for(check: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


def events_named(name: str, resource_id: str) -> list[dict[str, Any]]:
    from prefect.settings import PREFECT_API_URL

    query = {"filter": {"event": {"name": [name]}, "resource": {"id": [resource_id]}, "any_resource": None}}
    response = httpx.post(f"{PREFECT_API_URL.value()}/events/filter", json=query, timeout=30)
    response.raise_for_status()
    return response.json()["events"]


def test_emitted_events_reach_the_prefect_server_with_their_resource_and_payload(harness) -> None:
    data = snapshot(model={"name": "emit-check"}, review_queue={"labelled": 70})
    events = monitoring_events.events_for(data, 50)
    ids = monitoring_events.emit(events)
    drain_events()
    assert len(ids) == 2
    (drift,) = wait_for(lambda: events_named(DRIFT_DETECTED, "transferkit.server.emit-check"), "the drift event")
    assert drift["id"] == ids[0]
    assert drift["resource"]["transferkit.model.version"] == "3"
    assert drift["payload"] == {"drift": data["drift"], "model": data["model"]}
    (labels,) = wait_for(lambda: events_named(LABELS_READY, "transferkit.server.emit-check"), "the labels event")
    assert labels["payload"]["review_queue"]["labelled"] == 70


@pytest.fixture(scope="module")
def nightly_retrain(tmp_path_factory: pytest.TempPathFactory, harness) -> Iterator[str]:
    """`nightly-retrain` and `monitor` deployed into the session's Prefect server by `prefect deploy`,
    from the project's prefect.yaml and flows committed in a throw-away git repository (its build
    steps read git); yields nightly-retrain's id. No worker: their runs stay Scheduled."""
    from prefect.settings import PREFECT_API_URL

    from tests.helpers import tool_env

    project = tmp_path_factory.mktemp("deploy")
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    shutil.copytree(REPO / "flows", project / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x"]):
        run_tool(["git", *args], project)
    env = {**tool_env(), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    run_tool(["prefect", "work-pool", "create", "transferkit-process", "--type", "process"], project, env=env)
    deploy = ["prefect", "--no-prompt", "deploy", "--name", "nightly-retrain", "--name", "monitor"]
    run_tool(deploy, project, env=env, timeout=300)
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("training_pipeline/nightly-retrain")
        monitor = client.read_deployment_by_name("monitor/monitor")
    assert [s.schedule.interval.total_seconds() for s in monitor.schedules] == [300]
    assert monitor.parameters == {"url": "http://127.0.0.1:8000", "min_new_labels": 50}
    assert monitor.work_pool_name == "transferkit-process"
    yield str(deployment.id)
    with get_client(sync_client=True) as client:
        for each in (deployment, monitor):
            client.delete_resource_owned_automations(f"prefect.deployment.{each.id}")
            client.delete_deployment(each.id)


def automation_runs(deployment_id: str) -> list[Any]:
    """The deployment's flow runs that an automation created (not its cron schedule)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))
    return [run for run in runs if run.created_by is not None and run.created_by.type == "AUTOMATION"]


@pytest.mark.slow
def test_drift_and_labels_events_each_start_one_nightly_retrain_run(nightly_retrain: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        owned = client.read_resource_related_automations(f"prefect.deployment.{nightly_retrain}")
    assert sorted(a.trigger.expect for a in owned) == [{DRIFT_DETECTED}, {LABELS_READY}]
    assert {a.trigger.within.total_seconds() for a in owned} == {86400}

    drifted = snapshot(model={"name": "trigger-check"})
    monitoring_events.emit(monitoring_events.events_for(drifted, 50))
    drain_events()
    (first,) = wait_for(lambda: automation_runs(nightly_retrain), "a nightly-retrain run from the drift event")
    assert first.state.is_scheduled()

    # the drift again (the next monitor run), then enough labels: the drift is inside its window
    monitoring_events.emit(monitoring_events.events_for(drifted, 50))
    labelled = snapshot(model={"name": "trigger-check"}, drift={"detected": False}, review_queue={"labelled": 60})
    monitoring_events.emit(monitoring_events.events_for(labelled, 50))
    drain_events()
    wait_for(lambda: len(automation_runs(nightly_retrain)) >= 2, "a nightly-retrain run from the labels event")
    time.sleep(3)  # the repeated drift was evaluated before the labels event; give a late run time to show
    assert len(automation_runs(nightly_retrain)) == 2


# End to end: needs a transferkit server with GET /v1/monitor (branch `monitor`).


def server_has_monitor_route() -> bool:
    import transferkit.serving.app as app

    return monitoring_events.MONITOR_PATH in Path(app.__file__).read_text()


def noise_pngs(count: int, seed: int = 0) -> list[bytes]:
    """Uniform-noise images: inputs far from the ELPV cells the model's reference was measured on."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


@pytest.fixture
def drift_model(model_a: Path, elpv_subset: Path, tmp_path: Path) -> Path:
    """model_a with a drift reference in its metadata: its top-class confidences on half the ELPV
    subset, measured as an export measures them on val (until the exporter writes it)."""
    import json

    import numpy as np
    import onnx

    from transferkit.contract import DRIFT_REFERENCE, METADATA_PREFIX
    from transferkit.serving.onnx_model import OnnxClassifier

    classifier = OnnxClassifier(model_a, device="cpu")
    cells = sorted((elpv_subset / "images").glob("*.png"))[0::2]
    confidences = classifier.run(np.stack([classifier.preprocess(cell) for cell in cells]))[1].max(1)
    proto = onnx.load(str(model_a))
    reference = {"split": "val", "confidence": sorted(map(float, confidences))}
    proto.metadata_props.add(key=METADATA_PREFIX + DRIFT_REFERENCE, value=json.dumps(reference))
    path = tmp_path / "model-drift.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.fixture
def monitored_server(drift_model: Path) -> Iterator[str]:
    """The base URL of a real `transferkit serve` of ``drift_model`` with a 40-image drift window."""
    import subprocess
    import sys

    from tests.helpers import tool_env
    from transferkit.serving.client import ServingClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [sys.executable, "-m", "transferkit.cli", "serve", "--model", str(drift_model), "--device", "cpu"]
    args += ["--port", str(port), "--drift-window", "40", "--drift-min-samples", "40"]
    server = subprocess.Popen(args, env=tool_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with ServingClient(url) as client:
            client.wait_until_ready(120, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.mark.slow
@pytest.mark.skipif(not server_has_monitor_route(), reason="the server has no GET /v1/monitor yet (branch monitor)")
def test_a_drifted_server_makes_the_monitor_start_a_nightly_retrain_run(
    monitored_server: str, nightly_retrain: str
) -> None:
    from flows.monitor_pipeline import monitor_pipeline

    from transferkit.serving.client import ServingClient

    before = len(automation_runs(nightly_retrain))  # the trigger test's, when it ran first
    quiet = monitor_pipeline(url=monitored_server)  # nothing seen yet: no drift, no event
    assert quiet["drift_available"] and not quiet["drift_detected"] and quiet["events"] == []
    with ServingClient(monitored_server) as client:
        for image in noise_pngs(40):
            client.predict(image)

    def detected() -> bool:  # the monitor thread works off the request path: give it a moment
        return httpx.get(f"{monitored_server}/v1/monitor", timeout=10).json()["drift"]["detected"]

    wait_for(detected, "the server's drift test on 40 noise images")
    result = monitor_pipeline(url=monitored_server)
    assert result["drift_detected"] and result["events"] == [DRIFT_DETECTED]
    runs = wait_for(
        lambda: len(automation_runs(nightly_retrain)) > before and automation_runs(nightly_retrain),
        "a nightly-retrain run from the monitor's drift event",
    )
    assert len(runs) == before + 1
