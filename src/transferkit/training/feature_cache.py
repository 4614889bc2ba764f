"""Run the frozen bottom of the network once and keep its activations: the CPU fast path.

A unit that never trains computes the same function every epoch, so its output can be cached.
Random augmentation cannot be cached, but the eight D4 symmetries (rot90 x flip) can: each is
run once, and every epoch draws one cached view per sample. Solar-cell images have no preferred
orientation, so these views are label-preserving.

On the CPU the frozen part runs through ONNX Runtime (4-5x faster than PyTorch eager here, see
docs/benchmarks.md); on CUDA it runs in PyTorch with bf16 autocast.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from transferkit.export.onnx_export import INPUT_NAME, trace_to_onnx
from transferkit.io import atomic_write
from transferkit.models.classifier import ImageClassifier
from transferkit.serving.onnx_model import create_session

# (quarter turns, horizontal flip) for the 8 symmetries of the square; 1/2/4 views take prefixes
# chosen so that 2 = identity + flip and 4 = the four rotations.
D4_VIEWS = ((0, False), (0, True), (1, False), (2, False), (3, False), (1, True), (2, True), (3, True))
VIEW_SETS = {1: (0,), 2: (0, 1), 4: (0, 2, 3, 4), 8: tuple(range(8))}

TrunkFn = Callable[[torch.Tensor], torch.Tensor]


def apply_view(images: torch.Tensor, view: int) -> torch.Tensor:
    turns, flip = D4_VIEWS[view]
    out = torch.rot90(images, turns, dims=(-2, -1)) if turns else images
    return out.flip(-1) if flip else out


class _Trunk(nn.Module):
    def __init__(self, model: ImageClassifier, cut: int) -> None:
        super().__init__()
        self.model, self.cut = model, cut

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.trunk(images, self.cut)


def torch_trunk(model: ImageClassifier, cut: int, device: torch.device) -> TrunkFn:
    """The frozen units in PyTorch (used on CUDA, and as the reference in tests)."""
    trunk = _Trunk(model, cut).eval()

    @torch.no_grad()  # not inference_mode: the outputs feed layers that are trained
    def run(images: torch.Tensor) -> torch.Tensor:
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return trunk(images).float()

    return run


def onnx_trunk(model: ImageClassifier, cut: int, image_size: int, threads: int) -> TrunkFn:
    """The frozen units exported to ONNX and run by ONNX Runtime on the CPU."""
    proto = trace_to_onnx(_Trunk(model, cut).cpu().eval(), image_size, ["features"], opset=17)
    session = create_session(proto.SerializeToString(), ["CPUExecutionProvider"], threads)

    def run(images: torch.Tensor) -> torch.Tensor:
        (features,) = session.run(None, {INPUT_NAME: images.cpu().contiguous().numpy()})
        return torch.from_numpy(features)

    return run


def compute_features(
    trunk: TrunkFn, images: torch.Tensor, views: tuple[int, ...], batch_size: int, desc: str
) -> torch.Tensor:
    """fp16 activations of shape (views, N, C, h, w) for uint8 NCHW ``images``."""
    per_view: list[list[torch.Tensor]] = [[] for _ in views]
    with tqdm(total=len(views) * len(images), desc=desc, unit="img", dynamic_ncols=True) as bar:
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            for slot, view in enumerate(views):
                per_view[slot].append(trunk(apply_view(batch, view)).to(torch.float16).cpu())
                bar.update(len(batch))
    return torch.stack([torch.cat(chunks) for chunks in per_view])


def cache_key(**parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cached_features(cache_dir: Path, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """Load features for ``key`` from ``cache_dir`` or compute and store them (atomically).

    Resumed or repeated runs (a killed training, a study grid) then skip the trunk pass.
    """
    file = cache_dir / f"{key}.npy"
    if file.is_file():
        return torch.from_numpy(np.load(file))
    features = compute()
    with atomic_write(file) as handle:
        np.save(handle, features.numpy())
    return features
