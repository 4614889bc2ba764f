"""The monitor's files and drift window on their own: caps, oldest first, a restart, a disk margin.

Real files in a temp folder and the real scipy test; the server-level behaviour is test_monitor.py.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import png_bytes
from transferkit.contract import DRIFT_REFERENCE, OOD_OUTPUT
from transferkit.serving.drift import DriftWindow
from transferkit.serving.monitor_files import PredictionLog, ReviewQueue


def test_review_queue_keeps_the_newest_within_both_caps_and_survives_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "review"
    images = [png_bytes((40 + i, 30)) for i in range(7)]
    queue = ReviewQueue(folder, max_images=3, max_bytes=10**6, min_free_bytes=0)
    saved = [queue.add(image, {"label": "defective", "decision": "review"}) for image in images]
    kept = sorted(folder.glob("*.png"))
    assert kept == saved[-3:] and [path.read_bytes() for path in kept] == images[-3:]  # oldest went first
    for image in kept:
        sidecar = json.loads(image.with_suffix(".json").read_text())
        assert sidecar["image"] == image.name and sidecar["decision"] == "review"
    assert queue.count == 3 and queue.bytes == sum(path.stat().st_size for path in folder.iterdir())
    # A crash between an image and its sidecar, and a kill during an atomic write, leave debris.
    (folder / "20000101T000000_000000Z-0000.png").write_bytes(images[0])
    (folder / ".leftover.json.tmp").write_bytes(b"{")
    again = ReviewQueue(folder, max_images=2, max_bytes=10**6, min_free_bytes=0)
    again.add(images[0], {"label": "functional"})
    assert sorted(folder.glob("*.png"))[:1] == saved[-1:] and again.count == 2 and len(list(folder.iterdir())) == 4
    # The byte cap: each entry is an image plus its sidecar, so a cap of one and a half entries keeps one.
    entry = queue.bytes // queue.count
    tight = ReviewQueue(tmp_path / "tight", max_images=100, max_bytes=entry * 3 // 2, min_free_bytes=0)
    for image in images[-3:]:
        tight.add(image, {})
    assert tight.count == 1 and sum(p.stat().st_size for p in (tmp_path / "tight").iterdir()) <= tight.max_bytes


def test_nothing_is_written_under_the_free_disk_margin(tmp_path: Path) -> None:
    queue = ReviewQueue(tmp_path / "review", max_images=3, max_bytes=10**6, min_free_bytes=2**62)
    with pytest.raises(OSError) as raised:
        queue.add(png_bytes(), {})
    assert raised.value.errno == errno.ENOSPC and "monitor_min_free_bytes" in str(raised.value)
    assert not list((tmp_path / "review").iterdir()) and queue.count == 0
    log = PredictionLog(tmp_path / "predictions.jsonl", 4096, min_free_bytes=2**62)
    with pytest.raises(OSError):
        log.write({"label": "x"})
    assert log.size() == 0


def test_prediction_log_rotates_within_its_byte_cap(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "predictions.jsonl", max_bytes=6000, min_free_bytes=0)
    for index in range(500):
        log.write({"index": index, "label": "functional", "probabilities": {"functional": 0.9, "defective": 0.1}})
    log.close()
    assert all(path.is_file() for path in log.files()) and log.size() <= 6000
    newest = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert newest[-1]["index"] == 499 and [e["index"] for e in newest] == sorted(e["index"] for e in newest)
    with pytest.raises(ValueError, match="per-file cap"):
        log.write({"label": "x" * 3000})


def reference(on: dict[str, list[float]]) -> dict[str, object]:
    return {DRIFT_REFERENCE: {"split": "val", **{key: sorted(values) for key, values in on.items()}}}


def test_drift_window_watches_ood_score_when_it_can_and_says_why_not_otherwise() -> None:
    rng = np.random.default_rng(0)
    both = reference({"confidence": rng.uniform(0.5, 1, 300).tolist(), "ood_score": rng.normal(0, 1, 300).tolist()})
    window = DriftWindow(both, ["logits", "probabilities", OOD_OUTPUT], 50, 20, 0.01)
    for value in rng.normal(3, 1, 19):
        window.add(0.9, float(value))
    window.test()
    status = window.status()
    assert (status.on, status.window, status.detected, status.p_value) == ("ood_score", 19, False, None)
    assert "collecting: 19 of the 20" in status.reason
    window.add(0.9, 3.0)
    window.test()
    assert window.status().detected and window.status().reason is None and window.status().p_value < 0.01
    # Without the output, the same reference is watched on confidence; without a reference, no drift.
    assert DriftWindow(both, ["logits", "probabilities"], 50, 20, 0.01).status().on == "confidence"
    missing = DriftWindow({}, ["logits", "probabilities"], 50, 20, 0.01)
    missing.add(0.9, None)
    status = missing.status()
    assert (status.available, status.detected, status.on, status.window) == (False, False, None, 0)
    assert DRIFT_REFERENCE in status.reason and "re-export" in status.reason
    broken = DriftWindow(reference({"confidence": [0.5]}), ["logits", "probabilities"], 50, 20, 0.01).status()
    assert not broken.available and "2+ finite" in broken.reason
