"""`transferkit review suspects` on the shrunk pipeline's trained model: the queue a person reviews."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from tests.helpers import run_tool, shrunk_raw
from transferkit.data.cache import PreparedData
from transferkit.decision import LABEL_SUSPECTED, REASONS
from transferkit.io import sha256_file
from transferkit.serving.monitor_files import ReviewQueue

REVIEW = [sys.executable, "-m", "transferkit.cli", "review"]


def test_suspects_are_queued_like_served_images_with_their_given_label(trained_shrunk, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(trained_shrunk.model_dump(mode="json"), sort_keys=False))
    queue = tmp_path / "monitor" / "review"
    args = [*REVIEW, "suspects", "--queue", str(queue), "--top", "3", "--features", "trained", "-p", str(params)]
    first = run_tool(args, tmp_path)
    assert "suspected label error(s) among" in first.stderr and "queued 3 in" in first.stderr
    assert LABEL_SUSPECTED in REASONS
    names = PreparedData.load(trained_shrunk.paths.prepared).class_names
    sidecars = sorted(queue.glob("*.json"))
    assert len(sidecars) == 3
    ranks = []
    for sidecar in sidecars:
        entry = json.loads(sidecar.read_text())
        original = Path(trained_shrunk.data.path) / entry["file"]
        assert sha256_file(queue / entry["image"]) == sha256_file(original) == entry["sha256"]  # the bytes as on disk
        assert entry["reason"] == LABEL_SUSPECTED and entry["decision"] == "review"
        assert entry["given_label"] in names and list(entry["probabilities"]) == names
        assert entry["self_confidence"] == round(entry["probabilities"][entry["given_label"]], 6)
        ranks.append(entry["suspect_rank"])
    assert sorted(ranks) == [1, 2, 3]  # the queue's time order is the rank order
    # A rerun queues nothing twice; the server's own queue class takes the entries over as its own.
    again = run_tool(args, tmp_path)
    assert "queued 0 in" in again.stderr and "3 already there" in again.stderr
    server_queue = ReviewQueue(queue, max_images=10, max_bytes=10**8, min_free_bytes=0)
    server_queue._scan()
    assert server_queue.count == 3


def test_a_missing_prepared_folder_says_what_to_run(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    raw = shrunk_raw()
    raw["paths"]["prepared"] = str(tmp_path / "nowhere")
    params.write_text(yaml.safe_dump(raw))
    base = [*REVIEW, "suspects", "--queue", str(tmp_path / "q"), "-p", str(params)]
    missing = run_tool(base, tmp_path, check=False)
    assert missing.returncode == 2 and "run the prepare stage first" in missing.stdout + missing.stderr
