"""The study flow under the session's `prefect_test_harness`: cells run and the report is published."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_study_flow_runs_cells_and_publishes_the_report(tmp_path: Path, elpv_subset: Path, harness) -> None:
    from flows.study_pipeline import StudyRequest, study_pipeline
    from prefect.artifacts import Artifact

    from tests.helpers import REPO, study_params

    params = study_params(tmp_path, elpv_subset)
    request = StudyRequest(
        project_dir=str(REPO), params_file=str(params), overrides={"study.strategies": ["linear"]}, jobs=1
    )
    assert study_pipeline(request) == {"report": str(tmp_path / "report" / "README.md"), "cells": 2}

    assert "| 2-class | linear | 1 | 1 |" in Artifact.get("study-report").data
