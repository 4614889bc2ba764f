"""Temperature scaling on validation logits: it undoes overconfidence without moving predictions."""

from __future__ import annotations

import pytest


def test_temperature_undoes_overconfidence_without_moving_predictions() -> None:
    import numpy as np

    from transferkit.training.calibration import fit_temperature, nll

    rng = np.random.default_rng(0)
    calibrated = rng.normal(size=(2000, 3)) * 2
    labels = np.array([rng.choice(3, p=np.exp(z) / np.exp(z).sum()) for z in calibrated])
    overconfident = calibrated * 4  # logits whose softmax claims far more than it knows
    fit = fit_temperature(overconfident, labels)
    assert fit.temperature == pytest.approx(4, rel=0.15)
    assert fit.val_nll_after < fit.val_nll_before == pytest.approx(nll(overconfident, labels))
    assert fit_temperature(calibrated, labels).temperature == pytest.approx(1, rel=0.15)
