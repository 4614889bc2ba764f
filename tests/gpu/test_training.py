"""CUDA paths: end-to-end training with live augmentation and bf16, and the CUDA ONNX provider.

Skipped where no CUDA device is present; the same code paths run on the CPU in
tests/stages/test_cuda_twins.py and tests/serving.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import shrunk_params
from transferkit.stages import evaluate, prepare, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_end_to_end_finetune_on_cuda(tmp_path: Path, elpv_subset: Path) -> None:
    params = shrunk_params(
        tmp_path, data__path=str(elpv_subset), train__device="cuda", train__frozen_units=0, train__epochs=2
    )
    prepare.run(params)
    summary = train.run(params)
    assert summary["device"] == "cuda" and summary["feature_cache"] is False
    assert 0.0 <= evaluate.run(params)["accuracy"] <= 1.0


def test_feature_cache_on_cuda_uses_torch(tmp_path: Path, elpv_subset: Path) -> None:
    params = shrunk_params(tmp_path, data__path=str(elpv_subset), train__device="cuda", train__feature_cache="on")
    prepare.run(params)
    assert train.run(params)["feature_cache"] is True
