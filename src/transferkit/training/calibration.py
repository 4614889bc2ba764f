"""Temperature scaling: one scalar that makes the probabilities mean what they say.

Label smoothing, class weighting and the EMA all move a network's confidence away from its
accuracy. Dividing the logits by a temperature fitted on the validation split (Guo et al. 2017)
fixes that without moving any prediction (argmax is unchanged). The test split is never used.
The fit is a bounded one-dimensional minimisation done with SciPy, because scikit-learn's
temperature calibration wraps an estimator and we only have logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

# log T is searched within +-LOG_T_BOUND: T from 1/20 to 20 covers any sane network.
LOG_T_BOUND = 3.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature)."""
    log_p = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-log_p[np.arange(len(labels)), labels].mean())


@dataclass(frozen=True)
class Calibration:
    method: str
    temperature: float
    val_nll_before: float
    val_nll_after: float

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    """The temperature minimising the validation NLL (1.0 when that does not lower it)."""
    before = nll(logits, labels)
    found = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded"
    )
    temperature = float(np.exp(found.x))
    after = nll(logits, labels, temperature)
    if not after < before:
        temperature, after = 1.0, before
    return Calibration("temperature", temperature, before, after)


def uncalibrated(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    """``train.calibration: none``: temperature 1, recorded the same way."""
    before = nll(logits, labels)
    return Calibration("none", 1.0, before, before)
