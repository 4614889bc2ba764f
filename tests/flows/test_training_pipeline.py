"""The training flow on the shrunk project, under one session-scoped `prefect_test_harness`."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.helpers import make_project, run_tool
from transferkit import orchestration
from transferkit.errors import ConfigError, DataError
from transferkit.io import sha256_bytes
from transferkit.registry import METRICS, Registry
from transferkit.review_drop import DataDrop, Label, utc_now

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory: pytest.TempPathFactory, elpv_subset: Path, harness) -> Path:
    return make_project(tmp_path_factory.mktemp("flow"), elpv_subset, shared_dvc_cache=True)


def _request(root: Path, **extra):
    from flows.training_pipeline import TrainingRequest

    return TrainingRequest(project_dir=str(root), registry="cells", **extra)


class _Receiver(BaseHTTPRequestHandler):
    """A real webhook endpoint on loopback that records what it is sent."""

    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_flow_promotes_v1_with_lineage(flow_project: Path) -> None:
    from flows.training_pipeline import training_pipeline

    result = training_pipeline(_request(flow_project))
    assert result["version"] == 1 and result["new_version"]
    registry = Registry(flow_project / "models/registry", "cells")
    assert registry.production() == 1
    lineage = registry.show(1)["lineage"]
    assert lineage["git_commit"] and lineage["data_hash"].endswith(".dir") and lineage["parent_version"] is None
    assert (registry.version_dir(1) / "model.onnx").is_file()
    assert (flow_project / "data/raw/elpv.dvc").is_file()  # the new data drop was `dvc add`-ed


def test_rerun_with_nothing_changed_trains_nothing(flow_project: Path) -> None:
    from flows.training_pipeline import training_pipeline

    result = training_pipeline(_request(flow_project))
    assert result == {**result, "version": 1, "new_version": False}
    # the gate (and export after it) see a new baseline; nothing is retrained, DVC's run cache restores it
    assert not {"prepare", "train", "evaluate"} & set(result["stages_run"])


def test_failing_gate_fails_the_run_notifies_and_keeps_production(flow_project: Path) -> None:
    from flows.training_pipeline import training_pipeline

    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    webhook = f"http://127.0.0.1:{server.server_address[1]}/hook"
    original = (flow_project / "params.yaml").read_text()
    try:
        state = training_pipeline(
            _request(flow_project, overrides={"gate.min_accuracy": 0.999}, webhook_url=webhook), return_state=True
        )
    finally:
        (flow_project / "params.yaml").write_text(original)
        server.shutdown()
    assert state.is_failed()
    assert _Receiver.received and _Receiver.received[0]["state"] == "Failed"
    assert "min_accuracy" in _Receiver.received[0]["message"]
    assert "min_accuracy" in state.message or "min_accuracy" in str(state.result(raise_on_failure=False))
    assert Registry(flow_project / "models/registry", "cells").production() == 1


def _reviewed_drop(root: Path, count: int) -> DataDrop:
    """A drop as the review page writes it (a real DataDrop): ``count`` new images, labelled."""
    drop = DataDrop(root / "data/raw/elpv-reviewed", ["functional", "defective"])
    for seed in range(count):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8)).save(buffer, "PNG")
        image, label = buffer.getvalue(), ("functional", "defective")[seed % 2]
        drop.write(image, Label(sha256_bytes(image), label, "inspector", utc_now(), "v1", "review", None, "page"))
    return drop


def test_new_model_with_reviewed_labels_becomes_v2_and_rollback_restores_v1(flow_project: Path) -> None:
    """v2 is another model (1 epoch) that also learns from a reviewed drop: the run `dvc add`s the
    drop after marking its labels ingested, prepare adds its images to train and val, and v2's
    lineage names its version; the test split is the same 40 images. Then rollback."""
    from flows.training_pipeline import training_pipeline

    drop = _reviewed_drop(flow_project, 8)
    assert drop.count_since(drop.ingested()) == 8
    original = (flow_project / "params.yaml").read_text()
    try:
        # Whether a 1-epoch model beats v1 on 40 test images is luck, and the gate is not what this
        # test is about, so any regression is allowed.
        overrides = {"train.epochs": 1, "gate.max_regression": 1.0}
        result = training_pipeline(_request(flow_project, overrides=overrides))
    finally:
        (flow_project / "params.yaml").write_text(original)
    assert result["version"] == 2 and {"prepare", "train"} <= set(result["stages_run"])
    registry = Registry(flow_project / "models/registry", "cells")
    lineage = registry.show(2)["lineage"]
    assert lineage["parent_version"] == 1
    pointer = flow_project / "data/raw/elpv-reviewed.dvc"
    assert lineage["reviewed_data"] == {"data/raw/elpv-reviewed": yaml.safe_load(pointer.read_text())["outs"][0]["md5"]}
    assert DataDrop.at(drop.root).count_since(drop.ingested()) == 0  # the server's labelled count starts over
    assert json.loads((registry.version_dir(2) / METRICS).read_text())["count"] == 40  # the same test split
    run_tool(["transferkit", "registry", "rollback", "--name", "cells", "--root", "models/registry"], flow_project)
    assert registry.production() == 1


def test_invalid_flow_parameters_fail_at_submission(flow_project: Path) -> None:
    from flows.training_pipeline import training_pipeline
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match="strategy"):
        training_pipeline(request={"project_dir": str(flow_project), "strategy": "magic"})
    with pytest.raises(ParameterTypeError, match="bogus"):
        training_pipeline(request={"bogus": 1})


def test_invalid_override_is_named_before_any_work(flow_project: Path) -> None:
    from flows.training_pipeline import configure_run

    from transferkit.run_workspace import run_workspace

    with run_workspace(flow_project) as workspace, pytest.raises(ConfigError, match=r"train\.lr"):
        configure_run.fn(workspace, "params.yaml", {"train.lr": -1})


def test_transient_pull_failure_is_retried(flow_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.training_pipeline import sync_data

    remote = flow_project.parent / "remote"
    run_tool(["dvc", "remote", "add", "-f", "-d", "store", str(remote)], flow_project)
    run_tool(["dvc", "push", "data/raw/elpv.dvc"], flow_project)
    shutil.rmtree(flow_project / "data/raw/elpv")
    real, calls = orchestration.run_dvc, []

    def flaky(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
        calls.append(args[0])
        if args[0] == "pull" and calls.count("pull") == 1:  # injected fault: the first pull breaks
            return subprocess.CompletedProcess(args, 1, "", "ERROR: connection reset by peer")
        return real(project, *args)

    monkeypatch.setattr(orchestration, "run_dvc", flaky)
    data_hash = sync_data(flow_project, "data/raw/elpv")
    assert calls.count("pull") == 2 and data_hash.endswith(".dir")
    assert len(list((flow_project / "data/raw/elpv/images").iterdir())) == 160


def test_missing_data_without_remote_or_in_the_remote_says_which_command_fixes_it(tmp_path: Path) -> None:
    run_tool(["git", "init", "-q"], tmp_path)
    run_tool(["dvc", "init", "-q"], tmp_path)
    with pytest.raises(DataError, match="transferkit data elpv"):
        orchestration.sync_data(tmp_path, "data/raw/elpv")
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/elpv.dvc").write_text("outs:\n- md5: 0123.dir\n  path: elpv\n")
    with pytest.raises(DataError, match="dvc remote add"):
        orchestration.sync_data(tmp_path, "data/raw/elpv")
    run_tool(["dvc", "remote", "add", "-d", "store", str(tmp_path / "empty-remote")], tmp_path)
    with pytest.raises(DataError, match=r"does not hold the version .* run `dvc push`"):  # not retried as transient
        orchestration.sync_data(tmp_path, "data/raw/elpv")


def test_prefect_yaml_declares_each_flow_on_both_pools_at_the_deployed_commit() -> None:
    """Every deployment's entrypoint loads a flow, the nightly ones carry the cron and the event
    triggers, the monitor (process pool only) its 5-minute interval, and each run clones the
    revision recorded at deploy time."""
    import yaml
    from prefect.flows import load_flow_from_entrypoint

    from tests.helpers import REPO

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    twins = {f"{n}{s}" for n in ("nightly-retrain", "strategy-study", "tune") for s in ("", "-gpu")}
    assert set(deployments) == twins | {"monitor"}
    for name, deployment in deployments.items():
        flow = load_flow_from_entrypoint(str(REPO / deployment["entrypoint"]))
        assert flow.name in {"training_pipeline", "study", "tune", "monitor"}
        pool = "transferkit-gpu" if name.endswith("-gpu") else "transferkit-process"
        assert deployment["work_pool"]["name"] == pool
    assert deployments["nightly-retrain"]["schedules"][0]["cron"] == "0 2 * * *"
    assert deployments["monitor"]["schedules"] == [{"interval": 300}]
    for name in ("nightly-retrain", "nightly-retrain-gpu"):
        expected = [set(trigger["expect"]) for trigger in deployments[name]["triggers"]]
        assert expected == [{"transferkit.drift.detected"}, {"transferkit.labels.ready"}]
    assert deployments["nightly-retrain-gpu"]["work_pool"]["job_variables"]["gpus"] == 1
    clone = spec["pull"][0]["prefect.deployments.steps.git_clone"]
    assert clone["commit_sha"] == "{{ revision.stdout }}"
    assert spec["build"][0]["prefect.deployments.steps.run_shell_script"]["script"] == "git rev-parse HEAD"
