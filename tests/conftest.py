"""Session-wide fixtures (a real ELPV subset, one Prefect harness) and the offline environment."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

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

from tests.helpers import ADMIN_TOKEN, IMAGE_SIZE, RULE, SUBSET_SIZE, as_older_export, export_model, tool_env
from transferkit.data.elpv import materialize_elpv

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


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


@pytest.fixture(scope="session")
def _lite0_imagenet():
    import torch

    from transferkit.models.classifier import build_classifier

    torch.manual_seed(0)
    return build_classifier("efficientnet_lite0", "imagenet", num_classes=2, dropout=0.2).eval()


@pytest.fixture
def lite0(_lite0_imagenet):
    """Lite0 with its real ImageNet weights and a head seeded 0, in eval mode: loaded once per
    session, a fresh copy for each test (a test may train or edit it)."""
    import copy

    return copy.deepcopy(_lite0_imagenet)


# Serving: real exported models and real ELPV cells, and an in-process server.
@pytest.fixture(scope="session")
def model_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tmp_path_factory.mktemp("models") / "a" / "model.onnx", head_seed=0)


@pytest.fixture(scope="session")
def model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tmp_path_factory.mktemp("models") / "b" / "model.onnx", head_seed=1)


@pytest.fixture(scope="session")
def model_rule(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """model_a's network exported with ``RULE``: a ``decision`` output beside the heatmap."""
    return export_model(tmp_path_factory.mktemp("models") / "rule" / "model.onnx", head_seed=0, rule=RULE)


@pytest.fixture(scope="session")
def model_ood(tmp_path_factory: pytest.TempPathFactory, elpv_subset: Path) -> Path:
    """model_rule's network with the real ``embedding`` and ``ood_score`` outputs: a reference fitted
    on half the ELPV subset, its threshold and drift reference measured on a quarter (the last
    quarter is left for tests to send as held-out cells)."""
    images = sorted((elpv_subset / "images").glob("*.png"))
    path = tmp_path_factory.mktemp("models") / "ood" / "model.onnx"
    return export_model(path, head_seed=0, rule=RULE, ood_images=(images[0::2], images[1::4]))


@pytest.fixture(scope="session")
def model_old(model_a: Path) -> Path:
    """model_a as exported before the optional outputs: neither decision nor heatmap."""
    return as_older_export(model_a, model_a.with_name("model-old.onnx"))


@pytest.fixture(scope="session")
def model_int8(model_a: Path, cells: list[Path]) -> Path:
    """model_a quantized to int8 (calibrated on real cells), metadata and contract kept."""
    import numpy as np

    from transferkit.config import Int8Params
    from transferkit.export.quantize import quantize_int8
    from transferkit.preprocessing import load_for_model

    calibration = np.stack([load_for_model(cell, IMAGE_SIZE, "bilinear") for cell in cells])
    path = model_a.with_name("model-int8.onnx")
    path.write_bytes(quantize_int8(model_a.read_bytes(), calibration, Int8Params(calibration_images=len(cells))))
    return path


@pytest.fixture(scope="session")
def cells(elpv_subset: Path) -> list[Path]:
    """Eight real ELPV cell images."""
    return sorted((elpv_subset / "images").glob("*.png"))[:8]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., TestClient]]:
    """Start an in-process server (lifespan included) for ``model`` with setting overrides. Batches
    of up to 8 unless a test says otherwise: the start-up probe (tested on its own) would time
    four batch sizes at every one of the suite's server starts."""
    from fastapi.testclient import TestClient

    from transferkit.serving.app import create_app
    from transferkit.serving.settings import ADMIN_TOKEN_ENV, load_settings

    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN_TOKEN)
    clients: list[TestClient] = []

    def start(model: Path | str, **overrides: object) -> TestClient:
        settings = load_settings(**{"model": str(model), "reload_interval_s": 0, "max_batch_size": 8, **overrides})
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def trained_shrunk(tmp_path_factory: pytest.TempPathFactory, elpv_subset: Path):
    """The shrunk config's prepare -> train -> evaluate -> gate, run once per session: the one
    trained model tests that only read it share (they must not write into its folders)."""
    from tests.helpers import shrunk_params
    from transferkit.stages import evaluate, gate, prepare, train

    params = shrunk_params(tmp_path_factory.mktemp("trained"), data__path=str(elpv_subset))
    for stage in (prepare, train, evaluate, gate):
        stage.run(params)
    return params
