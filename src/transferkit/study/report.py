"""The study report: a table of mean +- std over seeds, the transfer-learning claims, and plots.

Everything is computed from the cells' ``result.json`` files, so the report can be rebuilt at
any time (``transferkit study --report-only``) and always says which cells it is made of.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from transferkit.config import Params
from transferkit.errors import ConfigError
from transferkit.io import atomic_write, read_json, write_json, write_text
from transferkit.study.grid import ERROR, RESULT, base_raw

PRETRAINED = ("linear", "finetune", "gradual")


def collect(root: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(results, failures) of every cell folder under ``root``."""
    cells = sorted((root / "cells").glob("*/")) if (root / "cells").is_dir() else []
    results = [read_json(c / RESULT) for c in cells if (c / RESULT).is_file()]
    failures = [read_json(c / ERROR) for c in cells if (c / ERROR).is_file() and not (c / RESULT).is_file()]
    return results, failures


def aggregate(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, strategy, fraction): mean and std over seeds."""
    groups: dict[tuple[int, str, float], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[(result["classes"], result["strategy"], result["fraction"])].append(result)
    rows = []
    for (classes, strategy, fraction), runs in sorted(groups.items()):
        row: dict[str, Any] = {"classes": classes, "strategy": strategy, "fraction": fraction, "seeds": len(runs)}
        for key in ("test_accuracy", "test_macro_f1", "train_seconds", "best_epoch"):
            values = np.array([run[key] for run in runs], dtype=float)
            row[key] = float(values.mean())
            row[key + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def claims(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per binary-task fraction: the best pretrained strategy against scratch."""
    by_fraction: dict[float, dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        if row["classes"] == 2:
            by_fraction[row["fraction"]][row["strategy"]] = row
    out = []
    for fraction, strategies in sorted(by_fraction.items()):
        pretrained = [strategies[s] for s in PRETRAINED if s in strategies]
        if not pretrained or "scratch" not in strategies:
            continue
        best = max(pretrained, key=lambda row: row["test_accuracy"])
        scratch = strategies["scratch"]
        out.append(
            {
                "fraction": fraction,
                "best_pretrained": best["strategy"],
                "pretrained_accuracy": best["test_accuracy"],
                "scratch_accuracy": scratch["test_accuracy"],
                "margin": best["test_accuracy"] - scratch["test_accuracy"],
            }
        )
    return out


def _mean_std(row: dict[str, Any], key: str, digits: int = 4) -> str:
    """``mean ± std`` over seeds; a single seed has no spread to show."""
    if row["seeds"] == 1:
        return f"{row[key]:.{digits}f}"
    return f"{row[key]:.{digits}f} ± {row[key + '_std']:.{digits}f}"


def markdown(rows: list[dict[str, Any]], claim_rows: list[dict[str, Any]], failures: list[dict], intro: str) -> str:
    lines = [
        "# Transfer-learning study: strategy x training-data fraction",
        "",
        intro,
        "",
        "| task | strategy | train fraction | seeds | test accuracy | test macro-F1 | train s | epochs to best val |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['classes']}-class | {row['strategy']} | {row['fraction']:g} | {row['seeds']} | "
            f"{_mean_std(row, 'test_accuracy')} | {_mean_std(row, 'test_macro_f1')} | "
            f"{_mean_std(row, 'train_seconds', 0)} | {_mean_std(row, 'best_epoch', 1)} |"
        )
    if claim_rows:
        lines += [
            "",
            "## Pretrained vs scratch (binary task, mean test accuracy)",
            "",
            "| train fraction | best pretrained | accuracy | scratch | margin |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {c['fraction']:g} | {c['best_pretrained']} | {c['pretrained_accuracy']:.4f} | "
            f"{c['scratch_accuracy']:.4f} | {c['margin']:+.4f} |"
            for c in claim_rows
        ]
    if failures:
        lines += ["", "## Failed cells (rerun the study to retry them)", ""]
        lines += [f"- `{f['name']}`: {f['error']}" for f in failures]
    lines += [
        "",
        "![accuracy vs data fraction](accuracy_vs_fraction.png)",
        "",
        "![accuracy vs training time](accuracy_vs_time.png)",
    ]
    return "\n".join(lines) + "\n"


def _save(figure: plt.Figure, path: Path) -> None:
    with atomic_write(path) as handle:
        figure.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)


def plot_accuracy_vs_fraction(rows: list[dict[str, Any]], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for strategy in sorted({r["strategy"] for r in rows if r["classes"] == 2}):
        points = [r for r in rows if r["classes"] == 2 and r["strategy"] == strategy]
        axis.errorbar(
            [100 * r["fraction"] for r in points],
            [r["test_accuracy"] for r in points],
            yerr=[r["test_accuracy_std"] for r in points],
            marker="o",
            capsize=3,
            label=strategy,
        )
    axis.set(xscale="log", xlabel="training data used (%)", ylabel="test accuracy (mean ± std over seeds)")
    percents = sorted({100 * r["fraction"] for r in rows if r["classes"] == 2})
    axis.set_xticks(percents, labels=[f"{p:g}" for p in percents])
    axis.minorticks_off()
    axis.set_title("ELPV binary: accuracy vs training data")
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)


def plot_accuracy_vs_time(results: list[dict[str, Any]], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    for strategy in sorted({r["strategy"] for r in results}):
        points = [r for r in results if r["strategy"] == strategy and r["classes"] == 2]
        axis.scatter([r["train_seconds"] for r in points], [r["test_accuracy"] for r in points], label=strategy)
    axis.set(xscale="log", xlabel="training time (s, log)", ylabel="test accuracy")
    axis.set_title("ELPV binary: accuracy vs training time (one point per cell)")
    axis.grid(alpha=0.3)
    axis.legend()
    _save(figure, path)


def describe(params: Params, command: str) -> str:
    """The report's first paragraph: the command and the recipe every cell shares."""
    base = base_raw(params)
    model, data, train = base["model"], base["data"], base["train"]
    return (
        f"Every finished cell under `{params.study.root}`, reported by `{command}` (cells run by "
        f"earlier invocations on the same folder included). Every cell: {model['architecture']} "
        f"({model['weights']} weights, except scratch: random init), {data['image_size']} px, "
        f"up to {train['epochs']} epochs with early stopping on validation {train['selection_metric']}, "
        f"frozen_units {train['frozen_units']} for finetune and gradual, EMA horizon {train['ema_epochs']} epochs, "
        f"augmentation preset {train['augment']['preset']}, "
        f"the same split and test set; study overrides `{params.study.overrides}`. Mean ± sample std "
        "over seeds; training time is wall-clock on the machine that ran the cell, including the "
        "feature caching where the cell was the first to need those features."
    )


def write_report(params: Params, command: str) -> dict[str, Any]:
    """Build the report in ``study.report`` from the cells under ``study.root``; returns what it wrote."""
    out = Path(params.study.report)
    intro = describe(params, command)
    results, failures = collect(Path(params.study.root))
    if not results and not failures:
        raise ConfigError(f"no study cells under {params.study.root}; run `transferkit study` first")
    rows = aggregate(results)
    claim_rows = claims(rows)
    report = {"cells": results, "failed": failures, "table": rows, "claims": claim_rows}
    write_json(out / "results.json", report)
    write_text(out / "README.md", markdown(rows, claim_rows, failures, intro))
    plot_accuracy_vs_fraction(rows, out / "accuracy_vs_fraction.png")
    plot_accuracy_vs_time(results, out / "accuracy_vs_time.png")
    return report
