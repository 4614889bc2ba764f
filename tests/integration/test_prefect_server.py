"""Smoke test of the documented loop: `prefect server start`, serve the deployment, run it.

Everything on 127.0.0.1, bounded in time; the server and the serving process are killed at the end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, make_project, tool_env
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
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_served_deployment_runs_the_pipeline_and_promotes(prefect_server, tmp_path: Path, elpv_subset) -> None:
    project = make_project(tmp_path, elpv_subset)
    serving = _start([sys.executable, "-m", "flows.deploy"], prefect_server, tmp_path / "serve.log")
    try:
        request = {"request": {"project_dir": str(project), "registry": "cells"}}
        deadline = time.monotonic() + 60
        while True:  # the deployment exists once `serve` has registered it
            run = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "prefect",
                    "deployment",
                    "run",
                    "training_pipeline/nightly-retrain",
                    "--params",
                    json.dumps(request),
                    "--watch",
                    "--watch-timeout",
                    "400",
                ],
                cwd=REPO,
                env=prefect_server,
                capture_output=True,
                text=True,
                timeout=480,
            )
            if run.returncode == 0 or "not found" not in (run.stdout + run.stderr).lower():
                break
            if time.monotonic() > deadline:
                break
            time.sleep(2)
        output = run.stdout + run.stderr
        assert run.returncode == 0, output + (tmp_path / "serve.log").read_text()[-3000:]
        assert "Completed" in output
    finally:
        os.killpg(serving.pid, signal.SIGTERM)
        serving.wait(timeout=30)
    assert Registry(project / "models/registry", "cells").production() == 1
