"""Small ImageFolder datasets made from images that installed packages ship: no download.

They exist to try the "own images" path offline and to test what ELPV cannot show, the
orientation question: in ``digits`` a 6 turned upside down is a 9 and a mirrored 3 is not a 3;
in ``digits-any-orientation`` every digit was captured in a random flip/quarter turn (as cells,
specimens or aerial tiles are), so orientation carries no class information; in
``photo-orientation`` the class *is* the orientation (upright or upside-down crops of photos);
in ``mirror-letters`` the classes are mirror images of each other (b, d, p, q), as left and
right parts are: a mirrored image passes for one of another class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from transferkit.errors import DataError
from transferkit.io import atomic_write

Labelled = Iterator[tuple[str, np.ndarray]]  # (class name, HxW or HxWx3 uint8 image)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images * (255 / 16)).round().astype(np.uint8), digits.target


def digits(rng: np.random.Generator) -> Labelled:
    """sklearn's 1,797 handwritten digits (8x8), ten classes, upright as written."""
    images, targets = _digits()
    for image, target in zip(images, targets, strict=True):
        yield str(target), image


def digits_any_orientation(rng: np.random.Generator) -> Labelled:
    """The digits other than 6 and 9 (a half turn makes one the other), each in a random D4 view."""
    images, targets = _digits()
    for image, target in zip(images, targets, strict=True):
        if target not in (6, 9):
            turned = np.rot90(image, int(rng.integers(4)))
            yield str(target), np.fliplr(turned) if rng.integers(2) else turned


def _photos() -> list[np.ndarray]:
    import matplotlib
    from sklearn.datasets import load_sample_images

    grace = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return [*load_sample_images().images, np.asarray(Image.open(grace).convert("RGB"))]


def photo_orientation(rng: np.random.Generator, count: int = 400, side: int = 64) -> Labelled:
    """Random square crops of three photos, half of them turned upside down: the class."""
    photos = _photos()
    for i in range(count):
        photo = photos[int(rng.integers(len(photos)))]
        size = int(rng.integers(min(photo.shape[:2]) // 3, min(photo.shape[:2]) // 2))
        top, left = (int(rng.integers(extent - size)) for extent in photo.shape[:2])
        crop = np.asarray(Image.fromarray(photo[top : top + size, left : left + size]).resize((side, side)))
        yield ("upside_down", crop[::-1, ::-1]) if i % 2 else ("upright", crop)


def _fonts() -> list[Path]:
    """The upright DejaVu faces matplotlib ships: slanted ones would show which way a mirror went,
    and the Display faces hold no letters."""
    import matplotlib

    fonts = sorted((Path(matplotlib.get_data_path()) / "fonts" / "ttf").glob("DejaVu*.ttf"))
    return [font for font in fonts if not any(word in font.name for word in ("Oblique", "Italic", "Display"))]


def mirror_letters(rng: np.random.Generator, count: int = 800, side: int = 64) -> Labelled:
    """b, d, p and q (each a left-right or up-down mirror of two others) in random upright fonts,
    sizes, offsets and grey levels (200 of each)."""
    from PIL import ImageDraw, ImageFont

    fonts = _fonts()
    for i in range(count):
        letter = "bdpq"[i % 4]
        font = ImageFont.truetype(
            str(fonts[int(rng.integers(len(fonts)))]), int(rng.integers(side * 4 // 10, side * 7 // 10))
        )
        background = int(rng.integers(256))
        ink = (background + int(rng.integers(96, 161))) % 256  # at least 96 grey levels apart
        image = Image.new("L", (side, side), background)
        x, y = (side / 2 + int(rng.integers(-side // 8, side // 8 + 1)) for _ in range(2))
        ImageDraw.Draw(image).text((x, y), letter, font=font, fill=ink, anchor="mm")
        yield letter, np.asarray(image)


EXAMPLES: dict[str, Callable[[np.random.Generator], Labelled]] = {
    "digits": digits,
    "digits-any-orientation": digits_any_orientation,
    "photo-orientation": photo_orientation,
    "mirror-letters": mirror_letters,
}


def write_example(name: str, dest: str | Path, per_class: int | None = None, seed: int = 0) -> dict[str, int]:
    """Write example ``name`` as ``dest/<class>/<n>.png`` (at most ``per_class`` each); returns counts."""
    if name not in EXAMPLES:
        raise DataError(f"unknown example dataset {name!r}; choose one of {', '.join(EXAMPLES)}")
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise DataError(f"{dest} is not empty; choose a new folder (nothing was overwritten)")
    counts: dict[str, int] = {}
    for label, image in EXAMPLES[name](np.random.default_rng(seed)):
        if per_class is not None and counts.get(label, 0) >= per_class:
            continue
        number = counts[label] = counts.get(label, 0) + 1
        (dest / label).mkdir(parents=True, exist_ok=True)
        with atomic_write(dest / label / f"{number:04d}.png") as handle:
            Image.fromarray(np.ascontiguousarray(image)).save(handle, format="png")
    return dict(sorted(counts.items()))
