"""train: a kill -9 mid-run resumes from the last epoch, and a rerun reproduces the checkpoint byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import shrunk_params, tool_env
from transferkit.stages import prepare, train
from transferkit.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path: Path, elpv_subset: Path) -> None:
    params = shrunk_params(tmp_path, data__path=str(elpv_subset), train__epochs=6, train__early_stopping_patience=6)
    prepare.run(params)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    last = Path(params.paths.checkpoints) / "last.pt"
    command = [sys.executable, "-m", "transferkit.stages.train", "--params", str(params_file)]

    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # kill -9, mid-training
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    restored = load_checkpoint(last)["trainer"]["history"]
    assert restored and all(epoch["seconds"] > 0 for epoch in restored)

    result = subprocess.run(command, cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "resuming after epoch" in result.stderr
    summary = json.loads((Path(params.paths.train_reports) / "metrics.json").read_text())
    assert summary["epochs_run"] == 6
    assert summary["resumed_after_epoch"] == len(restored)
    timing = json.loads((Path(params.paths.train_reports) / "timing.json").read_text())
    assert timing["train_seconds"] > sum(epoch["seconds"] for epoch in restored)  # counts them too
    assert len(timing["epoch_seconds"]) == 6 and "train_seconds" not in summary
    assert not last.exists()  # a finished run leaves nothing to resume


def test_a_rerun_reproduces_the_checkpoint_and_metrics_byte_for_byte(trained_shrunk, tmp_path: Path) -> None:
    """Wall-clock times live in the untracked timing.json, so the same params and data give the same
    bytes (and a fresh clone's `dvc repro` the committed dvc.lock)."""
    first = trained_shrunk.paths
    again = trained_shrunk.model_copy(
        update={
            "paths": first.model_copy(
                update={
                    "train": str(tmp_path / "model"),
                    "checkpoints": str(tmp_path / "checkpoints"),
                    "train_reports": str(tmp_path / "reports"),
                }
            )
        }
    )
    train.run(again)
    for folder, name in (("train", "model.pt"), ("train_reports", "metrics.json")):
        before, after = Path(getattr(first, folder)) / name, Path(getattr(again.paths, folder)) / name
        assert before.read_bytes() == after.read_bytes(), f"{name} differs between two identical runs"
    assert json.loads((tmp_path / "reports" / "timing.json").read_text())["train_seconds"] > 0
