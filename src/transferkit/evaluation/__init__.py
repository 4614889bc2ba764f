"""Test-set metrics, slices, calibration, plots and the quality gate."""
