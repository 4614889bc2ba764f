"""The documented loop: `prefect server start`, `prefect deploy --all` from prefect.yaml, a process worker.

Everything on 127.0.0.1, bounded in time; the server and the serving process are killed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import REPO, commit_tracked_data, make_project, run_tool, tool_env
from transferkit.registry import Registry

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL it after 30 s: a Prefect worker's graceful shutdown
    (SIGTERM -> SIGINT -> waiting on its API calls) outlasted 30 s on a loaded 2-core machine after
    its flow run had completed, and the teardown is not what these tests check."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = _free_port()
    env = {
        **tool_env(),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    server = _start(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        tmp_path / "server.log",
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail(f"prefect server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
        yield env
    finally:
        _stop(server)


def prefect(env: dict[str, str], cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def deployable_project(tmp_path: Path, elpv_subset: Path) -> Path:
    """A committed copy of the project with its prefect.yaml, flows and data in a DVC remote, as a
    repository a worker anywhere could clone and `dvc pull`."""
    project = make_project(tmp_path, elpv_subset)
    for name in ("flows", "deploy"):
        shutil.copytree(REPO / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    run_tool(["dvc", "remote", "add", "-d", "-f", "store", str(tmp_path / "dvc-remote")], project)
    commit_tracked_data(project)
    run_tool(["dvc", "push", "-q"], project)
    return project


def test_prefect_yaml_registers_every_deployment_and_a_process_worker_runs_one(
    prefect_server, tmp_path: Path, elpv_subset
) -> None:
    """`prefect deploy --all` against a real server (both work pools), then a process worker runs the
    nightly retrain from a clone of the deployed commit: data pulled from the DVC remote, model promoted."""
    project = deployable_project(tmp_path, elpv_subset)
    prefect(prefect_server, project, "work-pool", "create", "transferkit-process", "--type", "process")
    template = str(project / "deploy" / "kubernetes-gpu-job-template.json")
    prefect(
        prefect_server,
        project,
        "work-pool",
        "create",
        "transferkit-gpu",
        "--type",
        "kubernetes",
        "--base-job-template",
        template,
    )
    env = {**prefect_server, "TRANSFERKIT_IMAGE": "registry.example/transferkit:test"}
    prefect(env, project, "--no-prompt", "deploy", "--all")
    answer = httpx.post(f"{prefect_server['PREFECT_API_URL']}/deployments/filter", json={}, timeout=30)
    registered = {d["name"]: d for d in answer.json()}
    assert set(registered) == {f"{n}{s}" for n in ("nightly-retrain", "strategy-study", "tune") for s in ("", "-gpu")}
    assert registered["tune-gpu"]["work_pool_name"] == "transferkit-gpu"
    assert registered["tune-gpu"]["job_variables"]["image"] == "registry.example/transferkit:test"

    worker = _start(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "transferkit-process"],
        prefect_server,
        tmp_path / "worker.log",
    )
    registry = tmp_path / "registry"
    try:
        request = {"request": {"registry": "cells", "registry_root": str(registry)}}
        run = prefect(
            prefect_server,
            project,
            *("deployment", "run", "training_pipeline/nightly-retrain", "--params", json.dumps(request)),
            *("--watch", "--watch-timeout", "400"),
            timeout=480,
        )
        assert "Completed" in run.stdout + run.stderr
    finally:
        _stop(worker)
    log = (tmp_path / "worker.log").read_text()
    assert "Executing deployment step: git_clone" in log
    assert Registry(registry, "cells").production() == 1
    lineage = Registry(registry, "cells").show(1)["lineage"]
    head = run_tool(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert lineage["git_commit"] == head  # the run trained the deployed commit
