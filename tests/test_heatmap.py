"""heatmap.peak: the centre of the strongest cell, the same at every border."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.heatmap import evidence, peak, upsample


def test_peak_is_the_centre_of_the_strongest_cell_at_every_border() -> None:
    """A 4x4 map over a 128x96 image: 32x24-pixel cells. The argmax of the upsampled map was
    (0, 0) for the top-left cell (the first pixel of the flat border) but the centre for the
    bottom-right one."""
    for row, col in [(0, 0), (0, 3), (3, 0), (3, 3), (1, 2)]:
        evidence_map = np.zeros((4, 4), dtype=np.float32)
        evidence_map[row, col] = 1.0
        assert peak(evidence_map, (128, 96)) == (32 * col + 16, 24 * row + 12)


def test_peak_mirrors_with_the_map() -> None:
    """Flipping the map left-right flips the peak: no side of the image is favoured."""
    maps = np.random.default_rng(0).normal(size=(20, 5, 5)).astype(np.float32)
    for evidence_map in maps:
        x, y = peak(evidence_map, (160, 160))
        assert peak(evidence_map[:, ::-1], (160, 160)) == (160 - x, y)
        assert peak(evidence_map[::-1], (160, 160)) == (x, 160 - y)


def test_peak_agrees_with_the_upsampled_map_inside_the_image() -> None:
    """Away from the border the cell's centre is where the bilinear upsampling peaks (to a pixel)."""
    evidence_map = np.zeros((4, 4), dtype=np.float32)
    evidence_map[2, 1] = 1.0
    resized = upsample(evidence_map, (128, 128))
    y, x = np.unravel_index(int(resized.argmax()), resized.shape)
    assert peak(evidence_map, (128, 128)) == pytest.approx((x, y), abs=1)


def test_evidence_is_the_class_maps_minus_their_mean() -> None:
    """A shift shared by every class is no evidence for any of them."""
    maps = np.stack([np.full((2, 2), 3.0), np.full((2, 2), 3.0) + np.eye(2)])
    np.testing.assert_allclose(evidence(maps, [1]), np.eye(2) / 2)
    np.testing.assert_allclose(evidence(maps + 7.0, [0, 1]), np.zeros((2, 2)))
