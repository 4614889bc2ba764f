"""Where the model saw a class: the graph's ``heatmap`` output turned into one map and an overlay.

The exported maps are per class, in calibrated-logit units, and sum over positions to the
logits. Softmax ignores a shift shared by every class, so the evidence *for* a class at a
position is its map minus the mean of all classes' maps there; summed over positions that is
the class's logit minus the mean logit, the part that moves its probability. For a set of
positive classes (ELPV's defective grades) their evidence is summed. Numpy and Pillow only: the
server and the CLI draw overlays without torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image


def evidence(heatmap: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """(h, w) evidence for ``classes`` from one image's (classes, h, w) maps."""
    centred = heatmap - heatmap.mean(axis=0, keepdims=True)
    return centred[list(classes)].sum(axis=0)


def upsample(evidence_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``evidence_map`` resized bilinearly to ``size`` (width, height), as float32."""
    image = Image.fromarray(evidence_map.astype(np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def peak(evidence_map: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """(x, y) pixel at the centre of the map cell with the strongest evidence, in an image of ``size``.

    The cell's centre is where the bilinearly upsampled map peaks too, except at the border:
    upsampling holds an edge cell's value flat out to the image's edge, and the argmax of that
    plateau is its first pixel, so a top or left cell pointed at the image's edge (half a cell
    off) while a bottom or right one pointed at its centre.
    """
    height, width = evidence_map.shape
    row, col = np.unravel_index(int(evidence_map.argmax()), evidence_map.shape)
    return int((col + 0.5) * size[0] / width), int((row + 0.5) * size[1] / height)


def overlay(image: Image.Image, evidence_map: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """``image`` with ``evidence_map`` painted on top (inferno colours, opacity by strength).

    Strength is relative within the image, from its median to its strongest evidence, and the
    half below the median is left unpainted: the hot spots are where the class was seen most,
    whatever the decision, which is what a person checking a missed defect needs to see; the
    score says how strong that was.
    """
    rgb = image.convert("RGB")
    resized = upsample(evidence_map, rgb.size)
    middle = float(np.median(resized))
    spread = float(resized.max()) - middle
    strength = np.clip((resized - middle) / spread, 0.0, 1.0) if spread > 0 else np.zeros_like(resized)
    colours = colormaps["inferno"](strength)[..., :3]
    weight = (alpha * strength)[..., None]
    blended = (1 - weight) * (np.asarray(rgb, dtype=np.float32) / 255) + weight * colours
    return Image.fromarray(np.round(blended * 255).astype(np.uint8))
