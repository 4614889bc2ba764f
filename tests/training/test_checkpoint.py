"""Self-describing checkpoints: a weights-only round trip, and a damaged file named with what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transferkit.errors import ModelError
from transferkit.training.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint


def test_checkpoint_round_trip_with_weights_only(tmp_path: Path, lite0) -> None:
    meta = {"architecture": "efficientnet_lite0", "class_names": ["a", "b"], "dropout": 0.2, "image_size": 64}
    save_checkpoint(tmp_path / "m.pt", lite0, meta)
    payload = load_checkpoint(tmp_path / "m.pt")
    restored = model_from_checkpoint(payload)
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(restored(images), lite0(images))
    assert payload["meta"] == meta


def test_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="run the train stage first"):
        load_checkpoint(tmp_path / "missing.pt")
