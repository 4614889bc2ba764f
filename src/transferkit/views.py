"""The eight flip / quarter-turn views of a square image: what augmentation draws, the feature
cache stores, the view probe compares and test-time augmentation averages.

One definition below all of them, so a cached view, a live-augmented view and an exported
TTA graph's view are the same pixels.
"""

from __future__ import annotations

import torch

# (quarter turns, horizontal flip) for the 8 symmetries of the square; view 1 is the mirror image.
D4_VIEWS = ((0, False), (0, True), (1, False), (2, False), (3, False), (1, True), (2, True), (3, True))
# What each view is called in a derived preset's name (view 6, a half turn then a mirror, is the vertical flip).
VIEW_NAMES = ("identity", "hflip", "rot90", "rot180", "rot270", "rot90+hflip", "vflip", "rot270+hflip")


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


def compose(first: int, then: int) -> int:
    """The view that is ``first`` followed by ``then``."""
    image = torch.arange(9).view(1, 1, 3, 3)
    both = apply_view(apply_view(image, first), then)
    return next(view for view in range(len(D4_VIEWS)) if torch.equal(apply_view(image, view), both))


def view_group(views: tuple[int, ...]) -> tuple[int, ...]:
    """The identity, ``views`` and every composition of them, sorted: the smallest set closed under composing.

    If each of ``views`` keeps an image's class, so does any sequence of them (mirroring across
    both axes is a half turn; a mirror plus the quarter turns gives all eight views).
    """
    group = {0, *views}
    while len(closed := group | {compose(a, b) for a in group for b in group}) > len(group):
        group = closed
    return tuple(sorted(group))
