"""Data-parallel training under torchrun on the CPU (gloo, 2 processes) against one process.

The same global batch, the same seeded order: the two runs take the same optimiser steps on the
same samples, so their loss curves agree up to what differs by design (per-rank BatchNorm
statistics, dropout and augmentation draws, class weights averaged per rank).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, run_tool, shrunk_params
from transferkit.config import Params, parse_params
from transferkit.stages import evaluate, prepare
from transferkit.training.checkpoint import MODEL, load_checkpoint

pytestmark = pytest.mark.slow
# Per-epoch mean training loss (about 0.7 falling to 0.6) may differ by this much. On full ELPV the
# 1-vs-2-process gap (0.018) stays under the seed-to-seed spread of one process (0.023;
# benchmarks/torchrun_training.py); on this ~100-image subset an epoch averages 7 batches and the gap
# measured 0.05, hence twice that.
LOSS_TOLERANCE = 0.1


def run_params(base: Params, root: Path, name: str) -> tuple[Path, Params]:
    raw = base.model_dump(mode="json")
    for key in ("train", "checkpoints", "train_reports", "evaluate", "test_logits"):
        raw["paths"][key] = str(root / name / key)
    file = root / f"{name}.yaml"
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    return file, parse_params(raw)


def losses(params: Params) -> list[float]:
    table = Path(params.paths.train_reports) / "plots" / "metrics" / "train" / "loss.tsv"
    return [float(row["loss"]) for row in csv.DictReader(table.open(), delimiter="\t")]


def test_two_gloo_processes_match_one_process_and_evaluate_reads_the_model(tmp_path: Path, elpv_subset: Path) -> None:
    base = shrunk_params(
        tmp_path,
        train__feature_cache="off",  # the end-to-end path, as on GPUs
        train__epochs=3,
        train__ema_epochs=0.0,
        train__num_threads=1,
    )
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "elpv").symlink_to(elpv_subset)
    prepare.run(base)
    one_file, one = run_params(base, tmp_path, "one")
    two_file, two = run_params(base, tmp_path, "two")
    run_tool([sys.executable, "-m", "transferkit.stages.train", "--params", str(one_file)], REPO)
    run = run_tool(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"),
            *("-m", "transferkit.stages.train", "--params", str(two_file)),
        ],
        REPO,
    )
    assert "Traceback" not in run.stderr, run.stderr

    single, parallel = losses(one), losses(two)
    assert len(single) == len(parallel) == 3
    assert max(abs(a - b) for a, b in zip(single, parallel, strict=True)) < LOSS_TOLERANCE, (single, parallel)
    assert parallel[-1] < parallel[0]  # it learns
    payload = load_checkpoint(Path(two.paths.train) / MODEL)
    assert payload["meta"]["training"]["processes"] == 2
    assert not any(key.startswith(("module.", "model.")) for key in payload["model"])  # no DDP wrapper in the keys
    metrics = evaluate.run(two)
    assert 0.0 <= metrics["accuracy"] <= 1.0
