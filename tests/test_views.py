"""The eight flip / quarter-turn views: distinct, and exactly what torch.rot90 and flips compute."""

from __future__ import annotations

import torch

from transferkit.views import D4_VIEWS, VIEW_NAMES, apply_view, compose, view_group


def test_d4_views_are_the_eight_distinct_symmetries() -> None:
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    variants = {apply_view(image, v).flatten().tolist().__str__() for v in range(len(D4_VIEWS))}
    assert len(variants) == 8
    assert torch.equal(apply_view(image, 0), image)
    assert torch.equal(apply_view(image, 1), image.flip(-1))  # view 1: the mirror image
    for view, (turns, flip) in enumerate(D4_VIEWS):  # transposes and flips: exactly torch.rot90
        expected = torch.rot90(image, turns, dims=(-2, -1))
        assert torch.equal(apply_view(image, view), expected.flip(-1) if flip else expected)


def test_view_group_closes_a_set_of_views_under_composition() -> None:
    image = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    assert torch.equal(apply_view(image, VIEW_NAMES.index("vflip")), image.flip(-2))
    for first in range(8):
        for then in range(8):
            assert torch.equal(apply_view(image, compose(first, then)), apply_view(apply_view(image, first), then))
    assert view_group(()) == (0,) and view_group((1,)) == (0, 1)
    assert view_group((1, 6)) == (0, 1, 3, 6)  # both mirrors: their product is the half turn
    assert view_group((2,)) == (0, 2, 3, 4)  # a quarter turn generates all four turns
    assert view_group((1, 2)) == tuple(range(8))
