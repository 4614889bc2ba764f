"""Session-wide fixtures (a real ELPV subset, one Prefect harness) and the offline environment."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Offline Prefect, isolated from the user's ~/.prefect (set before anything imports prefect).
os.environ.update(
    {
        "PREFECT_HOME": tempfile.mkdtemp(prefix="transferkit-prefect-"),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",  # tasks called outside a flow in tests
        "DVC_NO_ANALYTICS": "1",
    }
)

import pytest

from tests.helpers import SUBSET_SIZE, make_project, tool_env
from transferkit.data.elpv import materialize_elpv


@pytest.fixture(scope="session")
def elpv_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stratified 160-image subset of the real ELPV data, materialised once per session."""
    dest = tmp_path_factory.mktemp("elpv") / "elpv"
    materialize_elpv(dest, limit=SUBSET_SIZE, seed=0)
    return dest


@pytest.fixture(scope="session")
def harness():
    """One real Prefect API server (test harness) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def prefect_env(harness) -> dict[str, str]:
    """A subprocess environment whose flows report to the session's harness server (no ephemeral
    server started per command)."""
    from prefect.settings import PREFECT_API_URL

    return {**tool_env(), "PREFECT_API_URL": str(PREFECT_API_URL.value())}


@pytest.fixture
def project(tmp_path: Path, elpv_subset: Path) -> Path:
    return make_project(tmp_path, elpv_subset)
