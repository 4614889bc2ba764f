"""User data (ImageFolder) with corrupt and empty files, and kill -9 resume of training."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import shrunk_params, tool_env
from transferkit.data.sources import list_samples
from transferkit.errors import DataError
from transferkit.stages import evaluate, export, gate, prepare, train
from transferkit.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def _image_folder(root: Path, elpv: Path, per_class: int = 40) -> Path:
    """A real ImageFolder tree built from ELPV cells: <root>/<class>/<file>."""
    from transferkit.config import DataParams

    samples, _ = list_samples(DataParams(path=str(elpv)))
    for label in ("functional", "defective"):
        (root / label).mkdir(parents=True)
        for sample in [s for s in samples if s.label == label][:per_class]:
            shutil.copy(elpv / sample.file, root / label / Path(sample.file).name)
    return root


def test_image_folder_with_corrupt_and_empty_images_runs_end_to_end(tmp_path: Path, elpv_subset: Path) -> None:
    data = _image_folder(tmp_path / "raw", elpv_subset)
    good = next((data / "defective").iterdir()).read_bytes()
    (data / "defective" / "truncated.png").write_bytes(good[: len(good) // 3])
    (data / "functional" / "empty.png").write_bytes(b"")
    (data / "functional" / "not_an_image.jpg").write_bytes(b"hello, I am text")
    params = shrunk_params(tmp_path, data__source="imagefolder", data__path=str(data), train__epochs=1)

    report = prepare.run(params)
    reasons = {Path(entry["file"]).name: entry["reason"] for entry in report["skipped"]}
    assert set(reasons) == {"truncated.png", "empty.png", "not_an_image.jpg"}
    assert "0 bytes" in reasons["empty.png"] and "corrupt" in reasons["truncated.png"]
    assert report["total"] == 80 and set(report["counts"]["train"]) == {"defective", "functional"}

    train.run(params)
    metrics = evaluate.run(params)
    assert set(metrics["slices"]) == {"all"}
    gate.run(params)
    assert export.run(params)["parity"]["passed"]


def test_class_without_readable_images_is_an_error(tmp_path: Path, elpv_subset: Path) -> None:
    data = _image_folder(tmp_path / "raw", elpv_subset, per_class=5)
    (data / "broken").mkdir()
    (data / "broken" / "x.png").write_bytes(b"\x89PNG garbage")
    params = shrunk_params(tmp_path, data__source="imagefolder", data__path=str(data))
    with pytest.raises(DataError, match=r"\['broken'\] have no readable images"):
        prepare.run(params)
    assert not (tmp_path / "data" / "prepared").exists()  # nothing half-written


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path: Path, elpv_subset: Path) -> None:
    params = shrunk_params(tmp_path, data__path=str(elpv_subset), train__epochs=40, train__early_stopping_patience=40)
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
    assert summary["epochs_run"] == 40
    assert summary["resumed_after_epoch"] == len(restored)
    assert summary["train_seconds"] > sum(epoch["seconds"] for epoch in restored)  # counts them too
    assert not last.exists()  # a finished run leaves nothing to resume
