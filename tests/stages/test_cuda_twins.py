"""The GPU recipe's code on the CPU: bf16 autocast, channels_last, live augmentation, gradual
unfreezing and no feature cache, through gate and export (fp32 and fp16), on the shrunk config.

What CUDA changes is only the device string; everything else below is the code a GPU run takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import shrunk_params
from transferkit.contract import read_metadata
from transferkit.data.cache import PreparedData
from transferkit.evaluation.predict import predict_embedded
from transferkit.stages import evaluate, export, gate, prepare, train
from transferkit.training.checkpoint import MODEL, load_checkpoint, model_from_checkpoint
from transferkit.training.compute import Compute

pytestmark = pytest.mark.slow


def test_gpu_recipe_runs_end_to_end_on_the_cpu(tmp_path: Path, elpv_subset: Path) -> None:
    params = shrunk_params(
        tmp_path,
        data__path=str(elpv_subset),
        train__device="cpu",
        train__precision="bf16",
        train__memory_format="channels_last",
        train__feature_cache="off",
        train__strategy="gradual",
        train__unfreeze_every=1,
    )
    prepare.run(params)
    summary = train.run(params)
    assert summary["feature_cache"] is False and summary["precision"] == "bf16" and summary["channels_last"]

    metrics = evaluate.run(params)
    assert metrics["precision"] == "bf16" and metrics["channels_last"] is True

    # evaluate saved exact fp32 logits for export, not the bf16 ones its metrics came from
    prepared = PreparedData.load(params.paths.prepared)
    images = prepared.images_chw(prepared.indices("test"))
    model = model_from_checkpoint(load_checkpoint(Path(params.paths.train) / MODEL))
    bf16, _ = predict_embedded(model, images, 64, Compute(torch.device("cpu"), "bf16", True), "bf16")
    reference = np.load(params.paths.test_logits)
    assert np.abs(bf16 - reference).max() > params.export.parity_tolerance

    gate.run(params)
    report = export.run(params)
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-4

    half = params.model_copy(
        update={"export": params.export.model_copy(update={"precision": "fp16"}), "paths": params.paths}
    )
    report = export.run(half)
    assert report["precision"] == "fp16" and report["parity"]["passed"]
    assert report["parity"]["max_abs_diff"] <= report["parity"]["tolerance"]
    assert report["parity"]["tolerance"] >= params.export.fp16_parity_tolerance
    metadata = read_metadata(Path(params.paths.export) / "model.onnx")
    outputs = ["logits", "probabilities", "decision", "heatmap", "embedding", "ood_score"]
    assert metadata["precision"] == "fp16" and metadata["outputs"] == outputs
    assert report["ood_score"]["passed"]  # the OOD reference stays fp32 behind the fp16 backbone
    assert "fp16 weights and compute" in (Path(params.paths.export) / "model_card.md").read_text()
