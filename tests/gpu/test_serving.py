"""The CUDA provider with IO binding: same answers as the CPU, and a server that reports it runs on the GPU.

Skipped where the NVIDIA driver is absent; every other serving test covers the CPU path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from transferkit.onnx_runtime import cuda_driver_present
from transferkit.serving.onnx_model import OnnxClassifier

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_driver_present(), reason="needs the NVIDIA driver")]


def test_cuda_io_binding_matches_cpu(model_a: Path, cells: list[Path]) -> None:
    gpu, cpu = OnnxClassifier(model_a, "cuda"), OnnxClassifier(model_a, "cpu")
    assert gpu.on_gpu and gpu.providers[0] == "CUDAExecutionProvider"
    images = np.stack([cpu.preprocess(path) for path in cells])
    for batch in (images[:1], images):
        gpu_logits, gpu_probabilities = gpu.run(batch)
        cpu_logits, _ = cpu.run(batch)
        assert np.abs(gpu_logits - cpu_logits).max() < 1e-2
        assert (gpu_logits.argmax(1) == cpu_logits.argmax(1)).all()
        assert np.allclose(gpu_probabilities.sum(1), 1, atol=1e-4)


def test_server_on_cuda(serve, model_a: Path, cells: list[Path]) -> None:
    client = serve(model_a, device="cuda")
    assert client.get("/v1/model").json()["providers"][0] == "CUDAExecutionProvider"
    response = client.post("/v1/predict", content=cells[0].read_bytes(), headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
