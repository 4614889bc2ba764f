"""Prefect flow `tune`: run `transferkit tune` in a project and publish its trials as an artifact.

The trials run as tasks of the `tune-trials` flow on Dask and share one Optuna journal, so a
rerun (or a second deployment run on another machine) adds trials to the same study. The flow
fails when no trial completed, with the reason from the trials table.
"""

from __future__ import annotations

import subprocess
from typing import Any

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.run_requests import DaskRequest, last_line, run_cli
from transferkit.config import load_params


class TuneRequest(DaskRequest):
    """``overrides`` are dotted params (``tune.trials: 40``), passed on as `-S`."""


@task(cache_policy=NO_CACHE)
def run_tune_command(request: TuneRequest) -> subprocess.CompletedProcess[str]:
    return run_cli("tune", request)


@flow(name="tune")
def tune_pipeline(request: TuneRequest | None = None) -> dict[str, Any]:
    request = request or TuneRequest()
    project = request.project()
    result = run_tune_command(request)
    if result.returncode == 2:
        raise RuntimeError(f"tuning did not start: {last_line(result.stderr)}")
    root = project / load_params(project / request.params_file, request.overrides).tune.root
    if (root / "README.md").is_file():
        create_markdown_artifact((root / "README.md").read_text(), key="tune-report", description="Optuna trials")
    if result.returncode != 0:
        raise RuntimeError(f"tuning failed: {last_line(result.stderr)}")
    return {"best_params": yaml.safe_load((root / "best_params.yaml").read_text()), "report": str(root / "README.md")}
