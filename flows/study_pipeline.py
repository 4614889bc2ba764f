"""Prefect flow `study`: run `transferkit study` in a project and publish its report as an artifact.

The cells themselves run as tasks of the `study-grid` flow on Dask (a local cluster, or the one at
``dask_address``).

The study itself skips finished cells and records failed ones, so a retry or a rerun of this
flow only trains what is missing. The flow fails (after publishing the partial report) when a
cell failed, naming it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.requests import ProjectRequest
from transferkit import orchestration
from transferkit.config import load_params


class StudyRequest(ProjectRequest):
    """``overrides`` are dotted params (``study.seeds: [0]``), passed on as `-S`; ``dask_address``
    runs the cells on an existing Dask cluster (``tcp://HOST:8786``) instead of a local one."""

    jobs: int | None = None
    dask_address: str | None = None


@task(cache_policy=NO_CACHE)
def run_study_command(project: Path, request: StudyRequest) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, "-m", "transferkit.cli", "study", "-p", request.params_file]
    for key, value in request.overrides.items():
        args += ["-S", f"{key}={json.dumps(value)}"]  # JSON is YAML, which `-S` reads
    if request.jobs:
        args += ["--jobs", str(request.jobs)]
    if request.dask_address:
        args += ["--dask-address", request.dask_address]
    return subprocess.run(args, cwd=project, env=orchestration.tool_env(), capture_output=True, text=True)


@flow(name="study")
def study_pipeline(request: StudyRequest | None = None) -> dict[str, Any]:
    request = request or StudyRequest()
    project = Path(request.project_dir)
    result = run_study_command(project, request)
    if result.returncode == 2:  # invalid params: nothing ran
        raise RuntimeError(f"the study did not start: {result.stderr.strip().splitlines()[-1]}")
    params = load_params(project / request.params_file, request.overrides)
    report = project / params.study.report / "README.md"
    create_markdown_artifact(report.read_text(), key="study-report", description="strategy x fraction study")
    if result.returncode != 0:
        raise RuntimeError(f"study cells failed: {result.stderr.strip().splitlines()[-1]}")
    return {"report": str(report), "cells": len(list((project / params.study.root / "cells").glob("*/result.json")))}
