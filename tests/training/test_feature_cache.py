"""The feature cache is keyed by content: new pixels or a new trunk recompute, dead groups are pruned."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import torch

from transferkit.data.cache import PreparedData, images_hash
from transferkit.training.augment import PRESETS
from transferkit.training.compute import Compute
from transferkit.training.feature_cache import FeatureCache, compute_features, onnx_trunk, torch_trunk, trunk_onnx

CPU = Compute(torch.device("cpu"), "fp32", channels_last=False)
TWO_VIEWS = PRESETS["natural"].views  # identity and mirror
NAMES = {"architecture": "efficientnet_lite0", "weights": "imagenet", "cut": 5, "runtime": "onnxruntime-cpu"}


def prepared_at(root: Path, images: np.ndarray) -> PreparedData:
    """Prepared data as the prepare stage describes it (meta only: the cache reads nothing else)."""
    root.mkdir(parents=True, exist_ok=True)
    size = images.shape[1]
    meta = {"image_size": size, "resize": "bilinear", "data_hash": "d" * 16, "images_sha256": images_hash(images)}
    return PreparedData(root=root, meta=meta, rows=[])


def sha(graph: bytes) -> str:
    return hashlib.sha256(graph).hexdigest()


class Counter:
    """Counts how often the trunk really ran."""

    def __init__(self, model, images: torch.Tensor) -> None:
        self.model, self.images, self.calls = model, images, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        return compute_features(torch_trunk(self.model, 5, CPU), self.images, TWO_VIEWS, 2, "test")


def test_features_are_computed_once_per_content(tmp_path: Path, lite0) -> None:
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    prepared = prepared_at(tmp_path / "prepared", images.permute(0, 2, 3, 1).numpy())
    graph = sha(trunk_onnx(lite0, 5, 32))
    indices = np.arange(4)
    counter = Counter(lite0, images)
    first = FeatureCache.open(tmp_path / "cache", prepared, graph, **NAMES).features(indices, TWO_VIEWS, counter)
    again = FeatureCache.open(tmp_path / "cache", prepared, graph, **NAMES).features(indices, TWO_VIEWS, counter)
    assert counter.calls == 1 and first.shape[:2] == (2, 4) and first.dtype == torch.float16
    assert torch.equal(first, again)


def test_new_image_size_recomputes_and_prunes_the_old_group(tmp_path: Path, lite0) -> None:
    """The same prepared folder re-made at another size: the old activations are never served again."""
    small = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    large = torch.randint(0, 256, (4, 3, 48, 48), dtype=torch.uint8)
    cache_root, prepared_root = tmp_path / "cache", tmp_path / "prepared"
    indices = np.arange(4)
    old = FeatureCache.open(cache_root, prepared_at(prepared_root, small.permute(0, 2, 3, 1).numpy()), "t", **NAMES)
    old.features(indices, TWO_VIEWS, Counter(lite0, small))
    counter = Counter(lite0, large)
    new = FeatureCache.open(cache_root, prepared_at(prepared_root, large.permute(0, 2, 3, 1).numpy()), "t", **NAMES)
    features = new.features(indices, TWO_VIEWS, counter)
    assert counter.calls == 1 and features.shape[-1] == 48 // 8  # 48 px in, stride 8 at unit 5
    assert new.group != old.group and not old.directory.exists()


def test_changed_trunk_recomputes(tmp_path: Path, lite0) -> None:
    """Same names, other weights behind them: the trunk graph's hash changes, and so does the key."""
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    prepared = prepared_at(tmp_path / "prepared", images.permute(0, 2, 3, 1).numpy())
    before = trunk_onnx(lite0, 5, 32)
    assert trunk_onnx(lite0, 5, 32) == before  # deterministic: an unchanged trunk keeps its key
    changed = copy.deepcopy(lite0)
    with torch.no_grad():
        next(changed.units[3].parameters()).mul_(1.01)
    after = trunk_onnx(changed, 5, 32)
    assert after != before
    first = FeatureCache.open(tmp_path / "cache", prepared, sha(before), **NAMES)
    second = FeatureCache.open(tmp_path / "cache", prepared, sha(after), **NAMES)
    assert first.group != second.group


def test_pruning_keeps_other_slots_and_drops_the_unreachable(tmp_path: Path) -> None:
    images = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    cache_root = tmp_path / "cache"
    linear = FeatureCache.open(cache_root, prepared_at(tmp_path / "a", images), "t", **{**NAMES, "cut": 18})
    other_data = FeatureCache.open(cache_root, prepared_at(tmp_path / "b", images + 1), "t", **NAMES)
    (cache_root / "legacy-flat-entry.npy").write_bytes(b"old layout")
    current = FeatureCache.open(cache_root, prepared_at(tmp_path / "a", images), "t", **NAMES)
    assert linear.directory.is_dir()  # another cut of the same data: still reachable (a study runs both)
    assert other_data.directory.is_dir()  # another prepared folder (a study task) keeps its own
    assert not (cache_root / "legacy-flat-entry.npy").exists()
    assert {p.name for p in cache_root.iterdir()} == {linear.group, other_data.group, current.group}


def test_workspaces_of_the_same_project_share_groups(tmp_path: Path) -> None:
    """A flow run's worktree configures the same relative prepared path: same slot, same group."""
    images = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    first = FeatureCache.open(tmp_path / "cache", prepared_at(tmp_path / "run1" / "data", images), "t", **NAMES)
    second = FeatureCache.open(tmp_path / "cache", prepared_at(tmp_path / "run2" / "data", images), "t", **NAMES)
    assert first.group == second.group and first.directory.is_dir()


CPU = Compute(torch.device("cpu"), "fp32", channels_last=False)


def test_onnx_runtime_trunk_matches_pytorch(lite0) -> None:
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    reference = torch_trunk(lite0, 12, CPU)(images)
    fast = onnx_trunk(trunk_onnx(lite0, 12, image_size=64), threads=2)(images)
    assert fast.shape == reference.shape == (3, 112, 4, 4)
    assert (fast - reference).abs().max().item() < 1e-4


def test_linear_probe_features_are_pooled(lite0) -> None:
    features = torch_trunk(lite0, lite0.num_units, CPU)(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert features.shape == (2, 1280, 1, 1)
