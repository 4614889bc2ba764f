"""PNG figures (matplotlib, headless): confusion matrix, training curves, reliability diagram, the
operating point's curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay

from transferkit.io import atomic_write


def save_figure(figure: plt.Figure, path: str | Path, dpi: int = 120) -> None:
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)


def confusion_matrix_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(1.6 + 1.3 * len(class_names), 1.2 + 1.2 * len(class_names)))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=list(class_names)).plot(
        ax=axis, cmap="Blues", colorbar=False, xticks_rotation=30
    )
    axis.set_title(title)
    return figure


def training_curves_figure(history: Sequence[dict[str, Any]], best_epoch: int) -> plt.Figure:
    epochs = [r["epoch"] + 1 for r in history]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(10, 3.8))
    loss_axis.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train loss")
    loss_axis.plot(epochs, [r["val_loss"] for r in history], marker="o", label="val loss")
    metric_axis.plot(epochs, [r["val_accuracy"] for r in history], marker="o", label="val accuracy")
    metric_axis.plot(epochs, [r["val_macro_f1"] for r in history], marker="o", label="val macro-F1")
    for axis in (loss_axis, metric_axis):
        axis.axvline(best_epoch + 1, color="grey", linestyle=":", label="best epoch")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        axis.legend()
    loss_axis.set_title("loss")
    metric_axis.set_title("validation")
    figure.tight_layout()
    return figure


def reliability_figure(
    probabilities: dict[str, np.ndarray], labels: np.ndarray, bins: int, eces: dict[str, float]
) -> plt.Figure:
    """Accuracy against confidence per bin, one line per set of probabilities (e.g. before and
    after calibration); points on the diagonal mean "0.9 is right 90 % of the time"."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    figure, axis = plt.subplots(figsize=(4.8, 4.4))
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for name, probs in probabilities.items():
        confidence, correct = probs.max(1), probs.argmax(1) == labels
        which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
        filled = [b for b in range(bins) if np.any(which == b)]
        axis.plot(
            [confidence[which == b].mean() for b in filled],
            [correct[which == b].mean() for b in filled],
            marker="o",
            label=f"{name} (ECE {eces[name]:.3f})",
        )
    axis.set_xlabel("confidence (top probability)")
    axis.set_ylabel("accuracy")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left")
    axis.set_title("reliability on the test split")
    return figure


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and error rate when only the ``k`` most confident decisions are automatic, for every k."""
    order = np.argsort(-confidence, kind="stable")
    counts = np.arange(1, len(order) + 1)
    return counts / len(order), 1 - np.cumsum(correct[order]) / counts


def operating_point_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    points: dict[str, tuple[float, float]],
    axes_names: dict[str, tuple[str, str]],
    title: str,
) -> plt.Figure:
    """One panel per curve (ROC, precision-recall, risk-coverage: (x, y) points), each with the
    chosen operating point or band of ``points`` marked; ``axes_names`` names x and y."""
    figure, axes = plt.subplots(1, len(curves), figsize=(4.4 * len(curves), 4.0), squeeze=False)
    for axis, (name, (x, y)) in zip(axes[0], curves.items(), strict=True):
        axis.plot(x, y, drawstyle="steps-post")
        if name in points:
            axis.plot(*points[name], marker="o", color="crimson", linestyle="", label="rule chosen on validation")
            axis.legend(loc="best")
        x_name, y_name = axes_names[name]
        axis.set_xlabel(x_name.replace("_", " "))
        axis.set_ylabel(y_name.replace("_", " "))
        axis.set_xlim(0, 1.01)
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
