"""The eight flip / quarter-turn views: distinct, and exactly what torch.rot90 and flips compute."""

from __future__ import annotations

import torch

from transferkit.views import D4_VIEWS, apply_view


def test_d4_views_are_the_eight_distinct_symmetries() -> None:
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    variants = {apply_view(image, v).flatten().tolist().__str__() for v in range(len(D4_VIEWS))}
    assert len(variants) == 8
    assert torch.equal(apply_view(image, 0), image)
    assert torch.equal(apply_view(image, 1), image.flip(-1))  # view 1: the mirror image
    for view, (turns, flip) in enumerate(D4_VIEWS):  # transposes and flips: exactly torch.rot90
        expected = torch.rot90(image, turns, dims=(-2, -1))
        assert torch.equal(apply_view(image, view), expected.flip(-1) if flip else expected)
