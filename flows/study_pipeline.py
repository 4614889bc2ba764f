"""Prefect flow `study`: run `transferkit study` in a project and publish its report as an artifact.

The cells themselves run as tasks of the `study-grid` flow on Dask (a local cluster, or the one
at ``dask_address``). The study skips cells already in its results store and records failed
ones, so a retry or a rerun of this flow only trains what is missing. The flow fails (after publishing the partial
report) when a cell failed, naming it.
"""

from __future__ import annotations

import subprocess
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.run_requests import DaskRequest, last_line, run_cli
from transferkit.config import load_params
from transferkit.io import read_json


class StudyRequest(DaskRequest):
    """``overrides`` are dotted params (``study.seeds: [0]``), passed on as `-S`."""


@task(cache_policy=NO_CACHE)
def run_study_command(request: StudyRequest) -> subprocess.CompletedProcess[str]:
    return run_cli("study", request)


@flow(name="study")
def study_pipeline(request: StudyRequest | None = None) -> dict[str, Any]:
    request = request or StudyRequest()
    project = request.project()
    result = run_study_command(request)
    if result.returncode == 2:  # invalid params: nothing ran
        raise RuntimeError(f"the study did not start: {last_line(result.stderr)}")
    params = load_params(project / request.params_file, request.overrides)
    report = project / params.study.report / "README.md"
    create_markdown_artifact(report.read_text(), key="study-report", description="strategy x fraction study")
    if result.returncode != 0:
        raise RuntimeError(f"study cells failed: {last_line(result.stderr)}")
    cells = read_json(report.with_name("results.json"))["cells"]
    return {"report": str(report), "cells": len(cells)}
