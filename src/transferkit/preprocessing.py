"""The one preprocessing definition: decode, convert to RGB, resize to a square, uint8 CHW.

prepare (the training cache), evaluate, export verification, ``transferkit predict`` and the
server all call these functions; scaling and normalisation live inside the model graph. Keeping
a single definition is what prevents train/serve skew.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from transferkit.errors import DataError

RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
GRAYSCALE_MODES = frozenset({"1", "L", "I", "I;16", "F"})
# UnidentifiedImageError (an OSError) is caught before these, with a message of its own.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def decode_image(source: str | Path | bytes, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image (a truncated file fails here, not later in a batch).

    ``max_pixels`` is checked on the header, before any pixel is decoded, so a decompression
    bomb sent to the server costs nothing (PIL's own limit only warns below twice its value).
    """
    name = "image bytes" if isinstance(source, bytes) else str(source)
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")  # noqa: SIM115
        with handle, Image.open(handle) as image:
            width, height = image.size
            if max_pixels is not None and width * height > max_pixels:
                raise DataError(f"{name} is {width}x{height} pixels, over the limit of {max_pixels:,}")
            image.load()
            return image.copy()
    except FileNotFoundError:
        raise DataError(f"image not found: {name}") from None
    except UnidentifiedImageError:
        raise DataError(f"cannot decode {name}: not an image format Pillow can read") from None
    except DECODE_ERRORS as error:
        raise DataError(f"cannot decode {name}: {error}") from None


def is_grayscale(image: Image.Image) -> bool:
    return image.mode in GRAYSCALE_MODES


def to_model_input(image: Image.Image, size: int, resize: str) -> np.ndarray:
    """RGB, resized (stretched) to ``size`` x ``size`` with ``resize``; uint8 HWC."""
    if image.mode in {"I", "I;16", "F"}:
        # 16-bit / float grayscale: scale into 8 bits before RGB conversion.
        array = np.asarray(image, dtype=np.float32)
        peak = max(float(array.max()), 1.0)
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8))
    if image.mode != "L":
        image = image.convert("RGB")
    # Grayscale is resized before it becomes RGB: the same pixels (RGB from L repeats the channel)
    # for a third of the resize work, which is most of the preprocessing cost.
    if image.size != (size, size):
        image = image.resize((size, size), RESAMPLING[resize])
    return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy (PIL's buffer view is read-only)


def load_for_model(source: str | Path | bytes, size: int, resize: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode + resize one image into the model's uint8 CHW input."""
    return to_model_input(decode_image(source, max_pixels), size, resize).transpose(2, 0, 1)
