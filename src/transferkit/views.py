"""The eight flip / quarter-turn views of a square image: what augmentation draws, the feature
cache stores, the orientation probe compares and test-time augmentation averages.

One definition below all of them, so a cached view, a live-augmented view and an exported
TTA graph's view are the same pixels.
"""

from __future__ import annotations

import torch

# (quarter turns, horizontal flip) for the 8 symmetries of the square; view 1 is the mirror image.
D4_VIEWS = ((0, False), (0, True), (1, False), (2, False), (3, False), (1, True), (2, True), (3, True))


def apply_view(images: torch.Tensor, view: int) -> torch.Tensor:
    """One of the eight flip / quarter-turn views of square NCHW ``images``.

    Quarter turns are written as transposes and flips (what ``torch.rot90`` computes) because
    rot90 has no ONNX export, and the same views run inside exported test-time-augmentation graphs.
    """
    turns, flip = D4_VIEWS[view]
    out = images
    if turns == 1:
        out = out.flip(-1).transpose(-2, -1)
    elif turns == 2:
        out = out.flip(-2, -1)
    elif turns == 3:
        out = out.transpose(-2, -1).flip(-1)
    return out.flip(-1) if flip else out
