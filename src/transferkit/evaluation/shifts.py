"""Images the model was not trained on, built on the fly: what an OOD score must catch.

Near shifts change in-distribution images the way a new camera or line would (blur, inverted
contrast, a tilted fixture, heavy JPEG, another crop scale, sensor noise); far shifts are other
things entirely (the example datasets, photos that installed packages ship, uniform noise).
Nothing here is committed as an image: the benchmark and the tests build the same sets from the
same functions.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from transferkit.data.examples import EXAMPLES

Shift = Callable[[Image.Image, np.random.Generator], Image.Image]


def _jpeg(image: Image.Image, _: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=5)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _rescaled_crop(image: Image.Image, _: np.random.Generator) -> Image.Image:
    """The centre half, scaled back up: a camera twice as close."""
    width, height = image.size
    return image.crop((width // 4, height // 4, width - width // 4, height - height // 4)).resize(image.size)


def _noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 40, (image.height, image.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


NEAR_SHIFTS: dict[str, Shift] = {
    "blur": lambda image, _: image.filter(ImageFilter.GaussianBlur(radius=4)),
    "inverted": lambda image, _: ImageOps.invert(image),
    "rotated_45": lambda image, _: image.rotate(45, resample=Image.Resampling.BILINEAR),
    "jpeg_q5": _jpeg,
    "rescaled_crop": _rescaled_crop,
    "sensor_noise": _noise,
}


def near_shift(name: str, images: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 NCHW ``images`` changed by the near shift ``name``, same size."""
    rng = np.random.default_rng(seed)
    shift = NEAR_SHIFTS[name]
    shifted = [np.asarray(shift(Image.fromarray(image.transpose(1, 2, 0)), rng)) for image in images]
    return np.stack(shifted).transpose(0, 3, 1, 2).copy()


def _package_photos() -> list[Path]:
    """Photos that installed packages ship: scikit-learn's two samples and matplotlib's portrait."""
    import matplotlib
    import sklearn

    folders = (Path(sklearn.__file__).parent / "datasets" / "images", Path(matplotlib.get_data_path()) / "sample_data")
    return sorted(path for folder in folders for path in folder.glob("*.jpg"))


def _as_chw(image: np.ndarray | Image.Image, size: int) -> np.ndarray:
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return np.asarray(picture.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)).transpose(2, 0, 1)


def package_photos(size: int, count: int, seed: int = 0) -> np.ndarray:
    """``count`` random crops (a quarter to all of each side) of the package photos, resized."""
    rng = np.random.default_rng(seed)
    photos = [Image.open(path).convert("RGB") for path in _package_photos()]
    crops = []
    for index in range(count):
        photo = photos[index % len(photos)]
        side = int(min(photo.size) * rng.uniform(0.25, 1.0))
        left, top = rng.integers(0, photo.width - side + 1), rng.integers(0, photo.height - side + 1)
        crops.append(_as_chw(photo.crop((left, top, left + side, top + side)), size))
    return np.stack(crops)


def example_images(name: str, size: int, count: int, seed: int = 0) -> np.ndarray:
    """The first ``count`` images of example dataset ``name`` (data/examples.py), resized."""
    images = []
    for _, image in EXAMPLES[name](np.random.default_rng(seed)):
        images.append(_as_chw(image, size))
        if len(images) == count:
            break
    return np.stack(images)


def far_shifts(size: int, count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Every far shift at ``size`` x ``size``, ``count`` images each."""
    rng = np.random.default_rng(seed)
    return {
        **{name: example_images(name, size, count, seed) for name in EXAMPLES},
        "package_photos": package_photos(size, count, seed),
        "uniform_noise": rng.integers(0, 256, (count, 3, size, size), dtype=np.uint8),
    }
