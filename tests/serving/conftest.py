"""Serving fixtures: real exported models (ImageNet Lite0 trunk, seeded heads) and real ELPV cells."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from transferkit.contract import HEADLINE_METRICS, model_metadata
from transferkit.export.onnx_export import export_onnx
from transferkit.models.classifier import build_classifier
from transferkit.serving.app import create_app
from transferkit.serving.settings import ADMIN_TOKEN_ENV, load_settings

IMAGE_SIZE = 64
CLASSES = ["functional", "defective"]
ADMIN_TOKEN = "test-admin-token"


def export_model(path: Path, head_seed: int) -> Path:
    """Export Lite0 with ImageNet weights and a head seeded by ``head_seed``, with full transferkit metadata."""
    torch.manual_seed(head_seed)
    model = build_classifier("efficientnet_lite0", "imagenet", num_classes=len(CLASSES), dropout=0.2).eval()
    meta = {
        "class_names": CLASSES,
        "image_size": IMAGE_SIZE,
        "resize": "bilinear",
        "architecture": "efficientnet_lite0",
        "weights": "imagenet",
        "strategy": "linear",
        "augment_preset": "orientation_free",
        "calibration": {"method": "none", "temperature": 1.0, "val_nll_before": 0.7, "val_nll_after": 0.7},
        "source": "elpv",
        "params_hash": f"seed{head_seed}",
        "data_hash": "test",
    }
    metrics = dict.fromkeys(HEADLINE_METRICS, 0.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(export_onnx(model, IMAGE_SIZE, 17, model_metadata(meta, metrics, "fp32")))
    return path


@pytest.fixture(scope="session")
def model_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tmp_path_factory.mktemp("models") / "a" / "model.onnx", head_seed=0)


@pytest.fixture(scope="session")
def model_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_model(tmp_path_factory.mktemp("models") / "b" / "model.onnx", head_seed=1)


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
    """Start an in-process server (lifespan included) for ``model`` with setting overrides."""
    monkeypatch.setenv(ADMIN_TOKEN_ENV, ADMIN_TOKEN)
    clients: list[TestClient] = []

    def start(model: Path | str, **overrides: object) -> TestClient:
        settings = load_settings(**{"model": str(model), "reload_interval_s": 0, **overrides})
        client = TestClient(create_app(settings), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)
