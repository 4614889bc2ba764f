"""`make gpu-check`: what only a GPU can show, in one run, written to benchmarks/results/gpu.json.

1. the CUDA tests (``-m gpu``: tests/gpu and the CUDA serving tests);
2. the pipeline's stages on the GPU recipe (params.yaml with ``train.device: cuda``, a few
   epochs) on the embedded ELPV data, through gate and an fp32 and an fp16 export;
3. benchmarks: training img/s (benchmarks/train_throughput.py on CUDA), ONNX Runtime's CUDA
   provider with IO binding for the fp32 and fp16 exports at batch 1 to 256, and served img/s
   (benchmarks/serving.py on CUDA).

A step whose tools are missing on the machine (pytest, aiohttp) is recorded as skipped with the
reason, the others still run. Without CUDA it says so in one line and exits 0, claiming nothing.

    .venv/bin/python benchmarks/gpu_check.py [--epochs 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from results import write_results

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 8, 32, 64, 128, 256)


def run_step(args: list[str]) -> dict[str, Any]:
    """A subprocess step: its exit code and last lines, never an exception."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    return {
        "returncode": result.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "tail": (result.stdout + result.stderr).strip().splitlines()[-8:],
    }


def pipeline_on_gpu(root: Path, epochs: int) -> tuple[dict[str, Any], Path, Path]:
    """prepare -> train -> evaluate -> gate -> export (fp32, then fp16) with the GPU recipe."""
    from transferkit.config import load_params
    from transferkit.data.elpv import materialize_elpv
    from transferkit.stages import evaluate, export, gate, prepare, train

    params = load_params(REPO / "params.yaml", {"train.device": "cuda", "train.epochs": epochs})
    raw = params.model_dump(mode="json")
    raw["paths"] = {key: str(root / value) for key, value in raw["paths"].items()}
    raw["data"]["path"] = str(root / "elpv")
    materialize_elpv(Path(raw["data"]["path"]))
    params = type(params).model_validate(raw)
    outcome: dict[str, Any] = {"prepare": prepare.run(params)["total"], "train": train.run(params)}
    outcome["evaluate"] = {k: v for k, v in evaluate.run(params).items() if not isinstance(v, dict | list)}
    outcome["gate_passed"] = gate.run(params)["passed"]
    fp32_model = Path(params.paths.export) / "model.onnx"
    outcome["export_fp32"] = export.run(params)["parity"]
    fp32_copy = fp32_model.with_name("model-fp32.onnx")
    fp32_copy.write_bytes(fp32_model.read_bytes())
    half = params.model_copy(update={"export": params.export.model_copy(update={"precision": "fp16"})})
    outcome["export_fp16"] = export.run(half)["parity"]
    return outcome, fp32_copy, fp32_model


def ort_cuda_throughput(model: Path, seconds: float) -> dict[int, float]:
    """img/s of the CUDA provider with IO binding at each batch size (uint8 images in, fp32 out)."""
    from transferkit.serving.onnx_model import OnnxClassifier

    classifier = OnnxClassifier(model, device="cuda")
    assert classifier.io_binding, "IO binding is the GPU default"
    rates = {}
    for batch in BATCHES:
        images = np.random.default_rng(batch).integers(0, 256, (batch, *classifier.input_shape), dtype=np.uint8)
        classifier.run(images)  # first sight of this shape
        started, done = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            classifier.run(images)
            done += batch
        rates[batch] = round(done / (time.perf_counter() - started), 1)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the GPU recipe's pipeline run")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per ONNX Runtime measurement")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; nothing was run or measured")
        return
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    result["gpu_tests"] = run_step(["-m", "pytest", "-q", "-m", "gpu", "tests"])
    with tempfile.TemporaryDirectory(prefix="transferkit-gpu-") as tmp:
        result["pipeline"], fp32, fp16 = pipeline_on_gpu(Path(tmp), args.epochs)
        result["ort_cuda_io_binding_img_per_s"] = {
            "fp32": ort_cuda_throughput(fp32, args.seconds),
            "fp16": ort_cuda_throughput(fp16, args.seconds),
        }
        result["train_throughput"] = run_step(["benchmarks/train_throughput.py", "--device", "cuda"])
        result["serving"] = run_step(
            [
                "benchmarks/serving.py",
                "--device",
                "cuda",
                "--model",
                str(fp32),
                "--checkpoint",
                f"{tmp}/models/train/model.pt",
            ]
        )
    rates = result["ort_cuda_io_binding_img_per_s"]
    lines = [
        f"# GPU check on {result['device']}",
        "",
        f"CUDA tests: exit {result['gpu_tests']['returncode']}; pipeline test accuracy "
        f"{result['pipeline']['evaluate']['accuracy']:.4f} ({result['pipeline']['evaluate']['precision']}), "
        f"train {result['pipeline']['train']['train_seconds']} s",
        "",
        "| batch | ORT CUDA fp32 img/s | ORT CUDA fp16 img/s |",
        "|---|---|---|",
        *(f"| {b} | {rates['fp32'][b]} | {rates['fp16'][b]} |" for b in BATCHES),
    ]
    write_results("gpu", result, lines)


if __name__ == "__main__":
    main()
