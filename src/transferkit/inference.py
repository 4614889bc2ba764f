"""The one batched-inference helper: every place that runs a model over many images uses it.

Evaluation, validation, the feature cache, export verification, ensembles and batch prediction
all hold their inputs in memory already (a prepared array, a list of files), so a DataLoader's
workers and collation would add processes and copies for nothing; what they share is the slicing,
the progress bar and the concatenation, written once here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from transferkit.contract import INPUT_NAME, OUTPUT_NAMES
from transferkit.onnx_runtime import CPU, create_session

Items = TypeVar("Items", bound=Sequence[Any])
Output = TypeVar("Output")


def batches_of(items: Items, batch_size: int, desc: str | None = None) -> Iterator[Items]:
    """``items`` in consecutive slices of ``batch_size``, with a progress bar (counted in items)
    when ``desc`` is given."""
    with tqdm(total=len(items), desc=desc, unit="img", dynamic_ncols=True, disable=desc is None) as bar:
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            yield chunk
            bar.update(len(chunk))


def concatenate(outputs: Iterable[Output], axis: int = 0) -> Output:
    """Per-batch outputs (torch tensors or numpy arrays) joined along ``axis``."""
    parts = list(outputs)
    if parts and hasattr(parts[0], "numpy"):
        import torch  # only when the outputs are tensors: the serving side runs without torch

        return torch.cat(parts, dim=axis)  # type: ignore[return-value]
    return np.concatenate(parts, axis=axis)  # type: ignore[return-value]


def run_batched(
    model: Callable[[Items], Output], items: Items, batch_size: int, desc: str | None = None, axis: int = 0
) -> Output:
    """``model`` over ``items`` ``batch_size`` at a time, outputs concatenated along ``axis``."""
    return concatenate((model(chunk) for chunk in batches_of(items, batch_size, desc)), axis)


def onnx_outputs(
    model_bytes: bytes, images: np.ndarray, names: Sequence[str], threads: int = 0, batch_size: int = 64
) -> dict[str, np.ndarray]:
    """The ``names`` outputs of an exported model on uint8 NCHW ``images`` (ONNX Runtime, CPU)."""
    session = create_session(model_bytes, [CPU], threads)
    parts = [session.run(list(names), {INPUT_NAME: chunk}) for chunk in batches_of(images, batch_size)]
    return {name: np.concatenate([part[i] for part in parts]) for i, name in enumerate(names)}


def onnx_logits(model_bytes: bytes, images: np.ndarray, threads: int = 0, batch_size: int = 64) -> np.ndarray:
    """The ``logits`` output of an exported model on uint8 NCHW ``images`` (ONNX Runtime, CPU)."""
    return onnx_outputs(model_bytes, images, [OUTPUT_NAMES[0]], threads, batch_size)[OUTPUT_NAMES[0]]
