"""Drift: do the recent images still look like the validation split the model was checked on?

A sliding window of one number per image (the ``ood_score`` output when the model has one and its
reference does, else the top-class confidence) is compared with the same number measured on the
validation split at export (metadata ``drift_reference``) by a two-sample Kolmogorov-Smirnov test
(``scipy.stats.ks_2samp``): distribution-free, and it needs nothing but the two samples. Drift is
detected once the window holds ``min_samples`` images and the p-value falls below ``alpha``.

Not thread-safe on its own: the monitor (serving/monitor.py) holds its lock around every call
but ``compare``, the test itself, which it runs outside the lock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy.stats import ks_2samp

from transferkit.contract import DRIFT_REFERENCE, OOD_OUTPUT

TEST = "ks_2samp"
DriftOn = Literal["ood_score", "confidence"]


@dataclass
class DriftStatus:
    """What /v1/monitor says about drift (its ``drift`` object)."""

    available: bool
    detected: bool
    on: DriftOn | None
    statistic: float | None
    p_value: float | None
    window: int
    window_size: int
    min_samples: int
    alpha: float
    reference: str | None
    reason: str | None
    test: str = TEST

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Reference:
    on: DriftOn | None  # None: no usable reference, see ``problem``
    sample: np.ndarray | None
    split: str | None
    problem: str | None


def _reference(metadata: dict[str, Any], outputs: list[str]) -> _Reference:
    """What to watch and its reference sample, or why drift cannot be tested for this model."""
    reference = metadata.get(DRIFT_REFERENCE)
    if not isinstance(reference, dict):
        why = "is not an object" if reference is not None else "is missing (exported before transferkit measured one)"
        return _Reference(None, None, None, f"the model's {DRIFT_REFERENCE!r} metadata {why}; re-export it")
    on: DriftOn = "ood_score" if OOD_OUTPUT in outputs and OOD_OUTPUT in reference else "confidence"
    try:
        sample = np.asarray(reference[on], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as error:
        return _Reference(None, None, None, f"the model's {DRIFT_REFERENCE!r} has no usable {on!r} ({error!r})")
    if sample.ndim != 1 or len(sample) < 2 or not np.isfinite(sample).all():
        return _Reference(None, None, None, f"the model's {DRIFT_REFERENCE!r} {on!r} is not 2+ finite numbers")
    return _Reference(on, sample, str(reference.get("split", "val")), None)


class DriftWindow:
    """The recent window of one model and its test against that model's reference."""

    def __init__(
        self, metadata: dict[str, Any], outputs: list[str], window_size: int, min_samples: int, alpha: float
    ) -> None:
        self.reference = _reference(metadata, outputs)
        self.window_size, self.min_samples, self.alpha = window_size, min_samples, alpha
        self._window: deque[float] = deque(maxlen=window_size)
        self._statistic: float | None = None
        self._p_value: float | None = None
        self._stale = False

    def add(self, confidence: float, ood_score: float | None) -> None:
        """One image's numbers; the one this window watches is kept (a NaN is not a measurement)."""
        if self.reference.on is None:
            return
        value = ood_score if self.reference.on == "ood_score" else confidence
        if value is not None and np.isfinite(value):
            self._window.append(float(value))
            self._stale = True

    def sample(self) -> np.ndarray | None:
        """A copy of the window to test when it changed since the last test and holds enough images;
        None otherwise. Taken under the monitor's lock; the test itself runs outside it."""
        if not self._stale:
            return None
        self._stale = False
        if self.reference.sample is None or len(self._window) < self.min_samples:
            self._statistic = self._p_value = None
            return None
        return np.fromiter(self._window, np.float64)

    def compare(self, sample: np.ndarray) -> tuple[float, float]:
        """The test of ``sample`` against the reference: (statistic, p-value). Needs no lock."""
        assert self.reference.sample is not None, "sample() returns None without a reference"
        result = ks_2samp(sample, self.reference.sample)
        return float(result.statistic), float(result.pvalue)

    def record(self, statistic: float, p_value: float) -> None:
        self._statistic, self._p_value = statistic, p_value

    def test(self) -> None:
        """Rerun the test on the window as it is now (when it changed and holds enough images)."""
        sample = self.sample()
        if sample is not None:
            self.record(*self.compare(sample))

    def status(self) -> DriftStatus:
        reason = self.reference.problem
        if reason is None and self._p_value is None:
            reason = f"collecting: {len(self._window)} of the {self.min_samples} images the test needs"
        return DriftStatus(
            available=self.reference.on is not None,
            detected=self._p_value is not None and self._p_value < self.alpha,
            on=self.reference.on,
            statistic=self._statistic,
            p_value=self._p_value,
            window=len(self._window),
            window_size=self.window_size,
            min_samples=self.min_samples,
            alpha=self.alpha,
            reference=self.reference.split,
            reason=reason,
        )
