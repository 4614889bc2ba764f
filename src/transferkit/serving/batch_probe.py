"""Which batch size this machine serves fastest, measured at start-up instead of assumed.

On a 2-core CPU one image per call beat batches of 8 and 32 (docs/benchmarks.md: the per-image
cost of a Lite0 grows with the batch once it leaves the cache), while a GPU wants big batches;
which one wins depends on the model, its input size and the machine. So, unless
``max_batch_size`` is set, the server times each candidate with as many concurrent calls as it
will make and takes the smallest size within ``TOLERANCE`` of the fastest (a smaller batch waits
less). A probe costs a few rounds of inference per candidate, under a second on the CPU for the
default model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CPU_CANDIDATES = (1, 2, 4, 8)
GPU_CANDIDATES = (1, 8, 32, 64)
TOLERANCE = 0.05  # a bigger batch must be this much faster to be worth its wait
ROUNDS = 3


def probe_batch_size(
    run: Callable[[np.ndarray], object], image_shape: tuple[int, ...], workers: int, candidates: tuple[int, ...]
) -> tuple[int, dict[int, float]]:
    """The chosen size and the images per second of each candidate, ``workers`` calls at a time."""
    rates: dict[int, float] = {}
    generator = np.random.default_rng(0)
    with ThreadPoolExecutor(workers, thread_name_prefix="batch-probe") as pool:
        for size in candidates:
            batch = generator.integers(0, 256, (size, *image_shape), dtype=np.uint8)
            list(pool.map(run, [batch] * workers))  # warm-up: ORT allocates per shape on first use
            started = time.perf_counter()
            for _ in range(ROUNDS):
                list(pool.map(run, [batch] * workers))
            rates[size] = size * workers * ROUNDS / (time.perf_counter() - started)
    fastest = max(rates.values())
    return min(size for size, rate in rates.items() if rate >= fastest * (1 - TOLERANCE)), rates
