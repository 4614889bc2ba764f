"""Run the frozen bottom of the network once and keep its activations: the CPU fast path.

A unit that never trains computes the same function every epoch, so its output can be cached.
Random augmentation cannot be cached, but the D4 symmetries (rot90 x flip) can: each view the
augmentation preset allows (training/augment.py) is run once, and every epoch draws one cached
view per sample.

On the CPU the frozen part runs through ONNX Runtime (4-5x faster than PyTorch eager here, see
docs/benchmarks.md); on CUDA it runs in PyTorch at the training precision. Cached activations
are keyed by content (the trunk's graph, the prepared images), never by names alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from transferkit.contract import INPUT_NAME
from transferkit.data.cache import PreparedData
from transferkit.inference import run_batched
from transferkit.io import atomic_write, read_json, write_json
from transferkit.models.classifier import ImageClassifier
from transferkit.onnx_graph import trace_to_onnx
from transferkit.onnx_runtime import CPU, create_session
from transferkit.training.compute import Compute
from transferkit.views import apply_view

TrunkFn = Callable[[torch.Tensor], torch.Tensor]
GROUP_FILE = "group.json"


class _Trunk(nn.Module):
    def __init__(self, model: ImageClassifier, cut: int) -> None:
        super().__init__()
        self.model, self.cut = model, cut

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.trunk(images, self.cut)


def trunk_onnx(model: ImageClassifier, cut: int, image_size: int) -> bytes:
    """The frozen units as a serialized ONNX graph: what the CPU path runs, and the trunk's identity.

    Its bytes are deterministic for the same code, weights and input size (checked in tests), so
    their hash changes whenever anything that shapes the features does, even behind the same names.
    """
    return trace_to_onnx(_Trunk(model, cut).cpu().eval(), image_size, ["features"], opset=17).SerializeToString()


def torch_trunk(model: ImageClassifier, cut: int, compute: Compute) -> TrunkFn:
    """The frozen units in PyTorch (CUDA, the end-to-end path, and the reference in tests)."""
    trunk = _Trunk(model, cut).eval()

    @torch.no_grad()  # not inference_mode: the outputs feed layers that are trained
    def run(images: torch.Tensor) -> torch.Tensor:
        with compute.autocast():
            return trunk(compute.to_device(images)).float()

    return run


def onnx_trunk(graph: bytes, threads: int) -> TrunkFn:
    """The frozen units (``trunk_onnx``) run by ONNX Runtime on the CPU."""
    session = create_session(graph, [CPU], threads)

    def run(images: torch.Tensor) -> torch.Tensor:
        (features,) = session.run(None, {INPUT_NAME: images.cpu().contiguous().numpy()})
        return torch.from_numpy(features)

    return run


def compute_features(
    trunk: TrunkFn, images: torch.Tensor, views: tuple[int, ...], batch_size: int, desc: str
) -> torch.Tensor:
    """fp16 activations of shape (views, N, C, h, w) for uint8 NCHW ``images``."""

    def every_view(batch: torch.Tensor) -> torch.Tensor:
        return torch.stack([trunk(apply_view(batch, view)).to(torch.float16).cpu() for view in views])

    return run_batched(every_view, images, batch_size, desc, axis=1)


def content_key(**parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class FeatureCache:
    """Activations of one trunk on one prepared dataset: ``<root>/<group>/<entry>.npy``.

    ``slot`` names what a run asks for (the prepared folder as configured, architecture,
    weights, cut, runtime); ``group`` is the content behind it (the trunk graph's hash, the
    prepared data's content hash). When the content behind a slot changes, the slot's older
    groups can never be asked for again and are pruned. The group does not depend on where the
    project lives, so flow runs in their own worktrees share one cache.
    """

    root: Path
    slot: str
    group: str

    @classmethod
    def open(cls, root: str | Path, prepared: PreparedData, trunk_sha256: str, **names: object) -> FeatureCache:
        slot = content_key(prepared=str(prepared.root), **names)
        group = content_key(trunk=trunk_sha256, data=prepared.content_hash, **names)
        cache = cls(Path(root), slot, group)
        cache.prune()
        write_json(cache.directory / GROUP_FILE, {"slot": slot, "prepared": str(prepared.root), **names})
        return cache

    @property
    def directory(self) -> Path:
        return self.root / self.group

    def prune(self) -> list[Path]:
        """Delete what no key can reach any more; returns what was deleted."""
        pruned = []
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if entry.name == self.group:
                continue
            record = entry / GROUP_FILE
            info = read_json(record) if record.is_file() else {}
            if not info or info["slot"] == self.slot:  # the old flat layout's files have no record either
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                pruned.append(entry)
        return pruned

    def features(
        self, indices: np.ndarray, views: tuple[int, ...], compute: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """Load the activations of ``indices`` x ``views`` or compute and store them (atomically).

        Resumed or repeated runs (a killed training, a study grid) then skip the trunk pass.
        """
        file = self.directory / f"{content_key(indices=indices.tolist(), views=views)}.npy"
        if file.is_file():
            return torch.from_numpy(np.load(file))
        features = compute()
        with atomic_write(file) as handle:
            np.save(handle, features.numpy())
        return features
