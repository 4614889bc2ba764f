"""Server settings: flags over environment, one clear error for bad values, a lossless trip through env."""

from __future__ import annotations

import pytest

from transferkit.errors import ConfigError
from transferkit.serving.settings import ServeSettings, load_settings


def test_flags_override_environment_and_none_means_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFERKIT_SERVE_MODEL", "registry:cells")
    monkeypatch.setenv("TRANSFERKIT_SERVE_MAX_BATCH_SIZE", "64")
    settings = load_settings(max_batch_size=None, port=9000)
    assert (settings.model, settings.max_batch_size, settings.port) == ("registry:cells", 64, 9000)
    assert settings.registry_name == "cells" and settings.served_name() == "cells"
    assert load_settings(model="models/export/model.onnx").served_name() == "model"


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"model": "m.onnx", "max_batch_size": -1}, {}, "max_batch_size"),
        ({"model": "m.onnx"}, {"TRANSFERKIT_SERVE_DEVICE": "gpu"}, "device"),
        ({}, {}, "model"),
        ({"model": "m.onnx", "drift_min_samples": 300}, {}, "drift_min_samples \\(300\\) cannot exceed drift_window"),
        ({"model": "m.onnx"}, {"TRANSFERKIT_SERVE_DRIFT_ALPHA": "1.5"}, "drift_alpha"),
        ({"model": "m.onnx", "monitor_dir": "mon", "workers": 2}, {}, "monitor_dir needs workers=1"),
    ],
    ids=["negative-batch", "unknown-device", "no-model", "window-under-min-samples", "alpha-over-one", "shared-dir"],
)
def test_bad_settings_name_the_setting(monkeypatch: pytest.MonkeyPatch, flags: dict, env: dict, message: str) -> None:
    monkeypatch.delenv("TRANSFERKIT_SERVE_MODEL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=rf"invalid server settings: .*{message}"):
        load_settings(**flags)


def test_settings_survive_the_trip_through_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    original = load_settings(
        model="registry:cells",
        max_delay_ms=2.5,
        tensorrt=False,
        workers=3,
        model_name="x",
        drift_alpha=0.05,
        drift_window=150,
    )
    for key, value in original.to_env().items():
        monkeypatch.setenv(key, value)
    assert ServeSettings() == original
