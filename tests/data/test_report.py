"""The data report warns about what changes results (tiny classes, imbalance, duplicates)."""

from __future__ import annotations

import pytest

from transferkit.data.report import ImageInfo, build_report, render_markdown
from transferkit.data.split import SPLITS


def test_data_report_warns_about_what_changes_results() -> None:
    images = (
        [ImageInfo(f"a/{i}.png", "a", "train", f"a{i}", 32, 32, "RGB") for i in range(220)]
        + [ImageInfo(f"b/{i}.png", "b", "train", f"b{i}", 40, 30, "L") for i in range(12)]
        + [ImageInfo("b/copy.png", "b", "test", "a0", 32, 32, "RGB")]  # a's image filed under b too
    )
    report = build_report(images, [{"file": "c/x.png", "reason": "empty file (0 bytes)"}], ["a", "b"], SPLITS)
    assert report["classes"] == {"a": 220, "b": 13} and report["imbalance_ratio"] == pytest.approx(16.92)
    assert report["colour_modes"] == {"RGB": 221, "L": 12}
    assert report["image_sizes"]["smallest"] == [32, 32] and report["image_sizes"]["largest"] == [40, 30]
    assert report["duplicates"]["groups"] == 1 and report["duplicates"]["conflicting_labels"] == 1
    text = " ".join(report["warnings"])
    for expected in ("fewer than 20 images: {'b': 13}", "16.92x", "2 files are exact duplicates", "different labels"):
        assert expected in text
    assert "1 files could not be read" in text
    assert "| b | 13 | 12 | 0 | 1 |" in render_markdown(report, SPLITS)
