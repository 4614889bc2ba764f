"""The HTTP API in process: every endpoint, every class of bad input, batching and back-pressure."""

from __future__ import annotations

import json
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ADMIN_TOKEN, CLASSES, IMAGE_SIZE, metric, png_bytes
from transferkit.serving.batch_probe import CPU_CANDIDATES, probe_batch_size
from transferkit.serving.onnx_model import OnnxClassifier


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb costs nothing to send."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def expected_probabilities(model: Path, files: list[Path]) -> np.ndarray:
    classifier = OnnxClassifier(model, device="cpu")
    return classifier.run(np.stack([classifier.preprocess(f) for f in files]))[1]


def test_predict_raw_and_multipart_match_the_model(serve, model_a: Path, cells: list[Path]) -> None:
    client = serve(model_a)
    expected = expected_probabilities(model_a, cells[:1])[0]
    raw = client.post("/v1/predict", content=cells[0].read_bytes(), headers={"content-type": "image/png"})
    multipart = client.post("/v1/predict", files={"file": ("cell.png", cells[0].read_bytes(), "image/png")})
    for response in (raw, multipart):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] == CLASSES[int(expected.argmax())]
        assert np.allclose([body["probabilities"][c] for c in CLASSES], expected, atol=1e-6)
        assert body["model_name"] == "model" and body["model_version"].startswith("sha256:")


def test_batch_reports_bad_files_per_entry(serve, model_a: Path, cells: list[Path]) -> None:
    client = serve(model_a)
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in cells[:3]]
    files.insert(1, ("files", ("broken.png", cells[0].read_bytes()[:200], "image/png")))
    response = client.post("/v1/predict/batch", files=files)
    assert response.status_code == 200, response.text
    entries = response.json()["predictions"]
    assert [e["filename"] for e in entries] == [cells[0].name, "broken.png", cells[1].name, cells[2].name]
    assert entries[1]["label"] is None and "cannot decode" in entries[1]["error"]
    expected = expected_probabilities(model_a, cells[:3])
    good = [e for e in entries if e["error"] is None]
    assert np.allclose([[e["probabilities"][c] for c in CLASSES] for e in good], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"plain text, not pixels", "image/png", 400, "not an image format"),
        (png_bytes()[:60], "image/png", 400, "cannot decode"),
        (b"", "image/jpeg", 400, "zero bytes"),
        (png_header_only(8_000, 8_000), "image/png", 400, "8000x8000 pixels, over the limit"),
        (png_header_only(60_000, 60_000), "image/png", 400, "decompression bomb"),
        (png_bytes(), "text/plain", 415, "unsupported content type"),
        (png_bytes(), "", 415, "unsupported content type"),
        (b"x" * 5000, "image/png", 413, "limit"),
    ],
    ids=[
        "not-an-image",
        "truncated-png",
        "zero-bytes",
        "over-pixel-limit",
        "decompression-bomb",
        "text",
        "no-type",
        "too-large",
    ],
)
def test_bad_images_get_a_clear_4xx(serve, model_a: Path, body: bytes, content_type: str, status: int, message: str):
    client = serve(model_a, max_body_bytes=4096)
    response = client.post("/v1/predict", content=body, headers={"content-type": content_type})
    assert response.status_code == status
    assert message in response.json()["error"]
    assert client.post("/v1/predict", content=png_bytes(), headers={"content-type": "image/png"}).status_code == 200


def test_multipart_mistakes_are_4xx(serve, model_a: Path) -> None:
    client = serve(model_a, max_request_images=2)
    no_files = client.post("/v1/predict", data={"note": "hello"}, files={"x": ("", b"", "")})
    assert no_files.status_code == 400
    too_many = client.post("/v1/predict/batch", files=[("f", (f"{i}.png", png_bytes(), "image/png")) for i in range(3)])
    assert too_many.status_code == 400 and "files" in too_many.json()["error"].lower()
    garbled = client.post("/v1/predict", content=b"--x\r\nnonsense", headers={"content-type": "multipart/form-data"})
    assert 400 <= garbled.status_code < 500


def test_model_info_carries_contract_and_lineage(serve, model_a: Path) -> None:
    info = serve(model_a).get("/v1/model").json()
    assert info["classes"] == CLASSES
    assert info["input"]["shape"] == [-1, 3, IMAGE_SIZE, IMAGE_SIZE]
    assert info["input"]["resize"] == "bilinear" and info["input"]["dtype"] == "uint8"
    assert info["lineage"]["architecture"] == "efficientnet_lite0"
    assert info["providers"] == ["CPUExecutionProvider"]


def infer_body(images: np.ndarray, **changes: object) -> dict:
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "UINT8", "data": images.ravel().tolist()}
    return {"id": "r1", "inputs": [{**tensor, **changes}]}


def test_v2_protocol_endpoints_and_json_infer(serve, model_a: Path, cells: list[Path]) -> None:
    client = serve(model_a, model_name="cells")
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/cells/ready").json()["ready"] is True
    metadata = client.get("/v2/models/cells").json()
    assert metadata["inputs"][0] == {"name": "images", "datatype": "UINT8", "shape": [-1, 3, IMAGE_SIZE, IMAGE_SIZE]}
    assert client.get("/v2/models/other").status_code == 404
    classifier = OnnxClassifier(model_a, device="cpu")
    images = np.stack([classifier.preprocess(p) for p in cells[:2]])
    response = client.post("/v2/models/cells/infer", json=infer_body(images))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "r1" and body["model_name"] == "cells"
    outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}
    logits, probabilities = classifier.run(images)
    assert np.allclose(outputs["logits"], logits, atol=1e-5)
    assert np.allclose(outputs["probabilities"], probabilities, atol=1e-6)
    # The optional class maps travel too, declared in the metadata, and sum to the logits.
    assert [o["name"] for o in metadata["outputs"]] == ["logits", "probabilities", "heatmap"]
    assert metadata["outputs"][2]["shape"][:2] == [-1, 2]
    assert np.allclose(outputs["heatmap"].sum((2, 3)), logits, atol=1e-4)
    only = infer_body(images) | {"outputs": [{"name": "probabilities"}]}
    assert [o["name"] for o in client.post("/v2/models/cells/infer", json=only).json()["outputs"]] == ["probabilities"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "pixels"}, "exactly one input named 'images'"),
        ({"datatype": "FP32"}, "must be UINT8"),
        ({"shape": [1, 3, IMAGE_SIZE, IMAGE_SIZE + 1]}, "must have shape"),
        ({"data": [0, 1, 2]}, "values for shape"),
        ({"data": [300] * (3 * IMAGE_SIZE * IMAGE_SIZE)}, "0-255"),
        ({"data": ["a"] * (3 * IMAGE_SIZE * IMAGE_SIZE)}, "integers 0-255"),
        ({"data": None}, "neither 'data'"),
    ],
    ids=["wrong-name", "wrong-dtype", "wrong-shape", "wrong-count", "out-of-range", "not-numbers", "no-data"],
)
def test_v2_bad_tensors_are_400(serve, model_a: Path, changes: dict, message: str) -> None:
    client = serve(model_a)
    body = infer_body(np.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8), **changes)
    response = client.post("/v2/models/model/infer", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_v2_binary_tensors_both_ways(serve, model_a: Path) -> None:
    client = serve(model_a)
    images = np.random.default_rng(0).integers(0, 256, (2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    tensor = {"name": "images", "shape": list(images.shape), "datatype": "UINT8"}
    request = {
        "inputs": [{**tensor, "parameters": {"binary_data_size": images.size}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
    header = json.dumps(request).encode()
    response = client.post(
        "/v2/models/model/infer",
        content=header + images.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)), "content-type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    probabilities = np.frombuffer(response.content[length:], dtype="<f4").reshape(2, 2)
    assert np.allclose(probabilities, OnnxClassifier(model_a, device="cpu").run(images)[1], atol=1e-6)


def test_concurrent_requests_are_batched_with_unchanged_results(serve, model_a: Path, cells: list[Path]) -> None:
    client = serve(model_a, max_batch_size=8, max_delay_ms=300)

    def post(path: Path) -> dict:
        response = client.post("/v1/predict", content=path.read_bytes(), headers={"content-type": "image/png"})
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, cells))
    calls, images = metric(client, "transferkit_batch_size_count"), metric(client, "transferkit_batch_size_sum")
    assert images == len(cells) and calls < len(cells), f"{images} images in {calls} calls: no batching"
    assert metric(client, 'transferkit_requests_total{route="/v1/predict",status="200"}') == len(cells)
    expected = expected_probabilities(model_a, cells)
    assert np.allclose([[r["probabilities"][c] for c in CLASSES] for r in results], expected, atol=1e-6)


def test_full_queue_answers_503_with_retry_after(serve, model_a: Path) -> None:
    client = serve(model_a, max_queue=1, max_batch_size=4, max_delay_ms=1000)

    def post(_: int):
        return client.post("/v1/predict", content=png_bytes(), headers={"content-type": "image/png"})

    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(post, range(3)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses[0] == 200 and 503 in statuses, statuses
    rejected = next(r for r in responses if r.status_code == 503)
    assert rejected.headers["retry-after"] == "1" and "busy" in rejected.json()["error"]
    assert metric(client, "transferkit_queue_depth") == 0


def test_admin_requires_the_token(serve, model_a: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = serve(model_a)
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload", headers={"authorization": "Bearer wrong"}).status_code == 403
    ok = client.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200 and ok.json()["version"].startswith("sha256:")
    monkeypatch.delenv("TRANSFERKIT_ADMIN_TOKEN")
    disabled = serve(model_a).post("/admin/reload", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert disabled.status_code == 403 and "TRANSFERKIT_ADMIN_TOKEN" in disabled.json()["error"]


def test_openapi_documents_every_route(serve, model_a: Path) -> None:
    client = serve(model_a)
    paths = client.get("/openapi.json").json()["paths"]
    for route in (
        "/v1/predict",
        "/v1/predict/batch",
        "/v1/model",
        "/v2/models/{name}/infer",
        "/metrics",
        "/admin/reload",
    ):
        assert route in paths
    assert "image/*" in paths["/v1/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_batch_size_is_probed_at_start_up_unless_set(serve, model_a: Path, cells: list[Path]) -> None:
    probed = serve(model_a, max_batch_size=0).get("/v1/model").json()["batching"]
    assert probed["probed"] and probed["max_batch_size"] in CPU_CANDIDATES
    assert set(map(int, probed["images_per_second"])) == set(CPU_CANDIDATES)
    client = serve(model_a, max_batch_size=4)
    assert client.get("/v1/model").json()["batching"] == {"probed": False, "max_batch_size": 4}
    headers = {"content-type": "image/png"}
    assert client.post("/v1/predict", content=cells[0].read_bytes(), headers=headers).status_code == 200


def test_probe_takes_the_smallest_batch_within_tolerance_of_the_fastest() -> None:
    """Calls with a fixed cost favour big batches; a per-image cost that grows with the batch (a
    CPU leaving its cache) favours one image per call."""

    def fixed_cost(batch: np.ndarray) -> None:
        time.sleep(0.02 + 0.001 * len(batch))

    def growing_cost(batch: np.ndarray) -> None:
        time.sleep(0.002 * len(batch) ** 2)

    assert probe_batch_size(fixed_cost, (3, 4, 4), 2, CPU_CANDIDATES)[0] == max(CPU_CANDIDATES)
    assert probe_batch_size(growing_cost, (3, 4, 4), 2, CPU_CANDIDATES)[0] == 1
