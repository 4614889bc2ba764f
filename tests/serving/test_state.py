"""Hot reload: a new model is checked before it is swapped in; a broken one never replaces a working one."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.helpers import ADMIN_TOKEN, metric
from transferkit.registry import Registry

ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def probabilities(client, cell: Path) -> dict:
    response = client.post("/v1/predict", content=cell.read_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    return response.json()


def replace_file(target: Path, content: bytes) -> None:
    staging = target.with_suffix(".tmp")
    staging.write_bytes(content)
    os.replace(staging, target)


def test_admin_reload_rejects_a_corrupt_file_and_swaps_a_good_one(
    serve, tmp_path: Path, model_a: Path, model_b: Path, cells: list[Path]
) -> None:
    served = tmp_path / "model.onnx"
    shutil.copy(model_a, served)
    client = serve(served)
    before = probabilities(client, cells[0])

    replace_file(served, model_a.read_bytes()[: 2**20])
    rejected = client.post("/admin/reload", headers=ADMIN)
    assert rejected.status_code == 409
    assert "still serving " + before["model_version"] in rejected.json()["error"]
    assert probabilities(client, cells[0]) == before
    assert client.get("/v2/health/ready").status_code == 200

    replace_file(served, model_b.read_bytes())
    swapped = client.post("/admin/reload", headers=ADMIN)
    assert swapped.status_code == 200, swapped.text
    assert swapped.json() == {
        "reloaded": True,
        "version": swapped.json()["version"],
        "previous_version": before["model_version"],
    }
    after = probabilities(client, cells[0])
    assert after["model_version"] == swapped.json()["version"] != before["model_version"]
    assert after["probabilities"] != before["probabilities"]
    assert metric(client, 'transferkit_model_reloads_total{outcome="rejected"}') == 1


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


@pytest.fixture
def registry(tmp_path: Path, model_a: Path, model_b: Path) -> Registry:
    registry = Registry(tmp_path / "registry", "cells")
    metrics = tmp_path / "metrics.json"
    metrics.write_text('{"accuracy": 0.5, "macro_f1": 0.5}')
    for model in (model_a, model_b):
        registry.register({"model.onnx": model, "metrics.json": metrics}, {"note": model.parent.name})
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    registry.register({"model.onnx": broken, "metrics.json": metrics}, {"note": "broken"})
    registry.promote(1)
    return registry


def test_registry_pointer_change_is_picked_up_and_a_broken_version_rejected(
    serve, registry: Registry, cells: list[Path]
) -> None:
    client = serve("registry:cells", registry_root=registry.path.parent, reload_interval_s=0.1)
    info = client.get("/v1/model").json()
    assert info["version"] == "v1" and info["lineage"]["note"] == "a"
    first = probabilities(client, cells[0])

    registry.promote(2)
    wait_for(lambda: client.get("/v1/model").json()["version"] == "v2")
    assert probabilities(client, cells[0])["probabilities"] != first["probabilities"]

    registry.promote(3)
    wait_for(lambda: metric(client, 'transferkit_model_reloads_total{outcome="rejected"}', 0) == 1)
    assert client.get("/v1/model").json()["version"] == "v2"
    assert probabilities(client, cells[0])["model_version"] == "v2"
    assert client.get("/v2/models/cells/versions/v2/ready").json()["ready"] is True
    assert client.get("/v2/models/cells/versions/v1/ready").status_code == 404
