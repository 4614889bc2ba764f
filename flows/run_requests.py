"""What every flow is asked to work on: a project folder, its params file and dotted overrides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect.settings import PREFECT_API_URL
from pydantic import BaseModel, ConfigDict

from transferkit import orchestration
from transferkit.run_workspace import deployment_home


class ProjectRequest(BaseModel):
    """Typed flow parameters; unknown keys and wrong types are refused at submission."""

    model_config = ConfigDict(extra="forbid")

    project_dir: str = "."
    params_file: str = "params.yaml"
    overrides: dict[str, Any] = {}

    def project(self) -> Path:
        """Where the work runs: ``project_dir``, or for a run a process deployment started in a
        throw-away clone, the checkout it was deployed from, so its study records, tuning journal
        and reports outlive the clone (``TRANSFERKIT_HOME``, run_workspace.deployment_home)."""
        return deployment_home(Path(self.project_dir))


class DaskRequest(ProjectRequest):
    """A request whose work fans out on Dask: ``jobs`` local workers, or the cluster at
    ``dask_address`` (``tcp://HOST:8786``)."""

    jobs: int | None = None
    dask_address: str | None = None


def run_cli(command: str, request: DaskRequest) -> subprocess.CompletedProcess[str]:
    """``transferkit COMMAND`` in the request's project, with its params file, overrides (`-S`,
    JSON being YAML) and Dask options."""
    args = [sys.executable, "-m", "transferkit.cli", command, "-p", request.params_file]
    for key, value in request.overrides.items():
        args += ["-S", f"{key}={json.dumps(value)}"]
    if request.jobs:
        args += ["--jobs", str(request.jobs)]
    if request.dask_address:
        args += ["--dask-address", request.dask_address]
    env = orchestration.tool_env()
    if api := PREFECT_API_URL.value():  # the cells' or trials' flow run reports where this one does
        env["PREFECT_API_URL"] = api
    return subprocess.run(args, cwd=request.project(), env=env, capture_output=True, text=True)


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no output)"
