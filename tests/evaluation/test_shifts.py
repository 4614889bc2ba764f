"""The shifted images the OOD benchmark and tests score: built on the fly, the right size, changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data.examples import EXAMPLES
from transferkit.evaluation.shifts import NEAR_SHIFTS, far_shifts, near_shift


@pytest.fixture(scope="module")
def cell_images(cells: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(c).convert("RGB").resize((64, 64))).transpose(2, 0, 1) for c in cells])


@pytest.mark.parametrize("name", list(NEAR_SHIFTS))
def test_near_shifts_keep_the_size_and_change_every_image(cell_images: np.ndarray, name: str) -> None:
    shifted = near_shift(name, cell_images)
    assert shifted.shape == cell_images.shape and shifted.dtype == np.uint8
    changed = np.abs(shifted.astype(int) - cell_images.astype(int)).reshape(len(shifted), -1).mean(1)
    assert (changed > 2).all(), (name, changed)
    np.testing.assert_array_equal(shifted, near_shift(name, cell_images))  # seeded: the same every run


def test_inversion_is_exact_and_far_shifts_cover_every_source() -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 3, 16, 16), dtype=np.uint8)
    np.testing.assert_array_equal(near_shift("inverted", images), 255 - images)
    far = far_shifts(32, 5)
    assert set(far) == {*EXAMPLES, "package_photos", "uniform_noise"}
    assert all(images.shape == (5, 3, 32, 32) and images.dtype == np.uint8 for images in far.values())
    assert len({images.tobytes() for images in far["package_photos"]}) == 5  # five different crops
