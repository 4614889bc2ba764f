"""The study report, built only from the records in the results store.

Every figure comes from the cells' records (params as each cell ran, metrics, timings, test
predictions), so a fresh clone rebuilds and checks it without training anything
(``transferkit study --report-only``). The report covers exactly the cells of the current grid:
records of other recipes stay in the store as history and are counted, not mixed in.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from transferkit.config import Params
from transferkit.errors import ConfigError, DataError
from transferkit.evaluation.plots import confusion_matrix_figure, save_figure
from transferkit.io import read_json, write_json, write_text
from transferkit.study import stats
from transferkit.study.grid import ERROR, base_raw, cell_params, study_cells
from transferkit.study.store import decode_labels, find, load_records, ran_with

PRETRAINED = ("linear", "finetune", "gradual")
GRID_AXES = {"data.classes", "train.strategy", "train.fraction", "train.seed"}
FIGURES = ("accuracy_vs_fraction.png", "accuracy_vs_time.png", "confusion_matrix_4class.png")


@dataclass
class Group:
    """The seeds of one (task, strategy, fraction): they share the test set, so they resample together."""

    classes: int
    strategy: str
    fraction: float
    records: list[dict[str, Any]]

    @property
    def labels(self) -> np.ndarray:
        return decode_labels(self.records[0]["test"]["labels"])

    @property
    def runs(self) -> list[np.ndarray]:
        return [decode_labels(r["test"]["predicted"]) for r in self.records]

    def values(self, section: str, key: str) -> np.ndarray:
        return np.array([r[section][key] for r in self.records], dtype=float)


def current_records(params: Params) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """(records of the current grid's cells, failures of its missing cells, records of other recipes)."""
    store, root = Path(params.study.store), Path(params.study.root)
    base = base_raw(params)
    stored = load_records(store)
    records, failures = [], []
    for cell in study_cells(params.study):
        cell_run = cell_params(base, cell, root)
        if (found := find(stored, cell.name, cell_run)) is not None:
            records.append(found)
        elif (error := Path(cell_run.paths.evaluate).parent / ERROR).is_file():
            failures.append(read_json(error))
    return records, failures, len(stored) - len(records)


def groups_of(records: list[dict[str, Any]]) -> list[Group]:
    grouped: dict[tuple[int, str, float], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[(record["classes"], record["strategy"], record["fraction"])].append(record)
    out = [Group(*key, sorted(runs, key=lambda r: r["seed"])) for key, runs in sorted(grouped.items())]
    for classes in {g.classes for g in out}:
        if len({r["data"]["content_hash"] for g in out if g.classes == classes for r in g.records}) > 1:
            raise DataError(
                f"the {classes}-class cells ran on different prepared data (the raw data or its preparation "
                "changed between them); rerun `transferkit study` to refresh the stale cells"
            )
    return out


def summarize(group: Group) -> dict[str, Any]:
    """Mean, std over seeds and the 95 % bootstrap interval over test images of one group."""
    row: dict[str, Any] = {
        "classes": group.classes,
        "strategy": group.strategy,
        "fraction": group.fraction,
        "seeds": len(group.records),
    }
    for name, (section, key) in {
        "accuracy": ("metrics", "accuracy"),
        "macro_f1": ("metrics", "macro_f1"),
        "train_seconds": ("training", "train_seconds"),
        "best_epoch": ("training", "best_epoch"),
    }.items():
        values = group.values(section, key)
        row[name] = float(values.mean())
        row[name + "_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return row | stats.headline_intervals(group.labels, group.runs, group.classes)


def majority_baselines(groups: list[Group]) -> dict[str, float]:
    """Per task, the accuracy of always answering the most common test class: the floor a model must clear."""
    first = {g.classes: g.labels for g in groups}
    return {f"{classes}-class": float(np.bincount(labels).max() / len(labels)) for classes, labels in first.items()}


def margins(groups: list[Group], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per binary-task fraction: the best pretrained strategy against scratch, with a paired interval."""
    by_key = {(g.classes, g.strategy, g.fraction): (g, row) for g, row in zip(groups, rows, strict=True)}
    out = []
    for fraction in sorted({g.fraction for g in groups if g.classes == 2}):
        pretrained = [by_key[(2, s, fraction)] for s in PRETRAINED if (2, s, fraction) in by_key]
        if not pretrained or (2, "scratch", fraction) not in by_key:
            continue
        best, best_row = max(pretrained, key=lambda pair: pair[1]["accuracy"])
        scratch, scratch_row = by_key[(2, "scratch", fraction)]
        out.append(
            {
                "fraction": fraction,
                "best_pretrained": best.strategy,
                "pretrained_accuracy": best_row["accuracy"],
                "scratch_accuracy": scratch_row["accuracy"],
                "margin": best_row["accuracy"] - scratch_row["accuracy"],
                "margin_ci": stats.margin_interval(best.labels, best.runs, scratch.runs, 2).as_dict(),
            }
        )
    return out


def targets(rows: list[dict[str, Any]], margin_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with what was measured (None where its cells have not run yet)."""

    def best(classes: int) -> dict[str, Any] | None:
        candidates = [r for r in rows if r["classes"] == classes and r["strategy"] in PRETRAINED]
        return max(candidates, key=lambda r: r["accuracy"], default=None)

    binary, four = best(2), best(4)
    finetune_10 = next((r for r in rows if (r["classes"], r["strategy"], r["fraction"]) == (2, "finetune", 0.1)), None)
    low = [m for m in margin_rows if m["fraction"] <= 0.25]
    return [
        _target("binary, best cell group: accuracy >= 0.92", binary and binary["accuracy"], 0.92, binary),
        _target("binary, best cell group: macro-F1 >= 0.90", binary and binary["macro_f1"], 0.90, binary),
        _target("finetune, 10 % of the train split: accuracy >= 0.85", finetune_10 and finetune_10["accuracy"], 0.85),
        _target(
            "pretrained beats scratch at every fraction run (smallest margin > 0)",
            min((m["margin"] for m in margin_rows), default=None),
            1e-12,
        ),
        _target(
            "pretrained beats scratch by >= 10 points at 5-25 % (smallest margin)",
            min((m["margin"] for m in low), default=None),
            0.10,
        ),
        _target("4-class, best cell group: accuracy >= 0.83", four and four["accuracy"], 0.83, four),
    ]


def _target(name: str, measured: float | None, threshold: float, row: dict[str, Any] | None = None) -> dict[str, Any]:
    where = f"{row['strategy']} at {row['fraction']:g}" if row else None
    met = None if measured is None else bool(measured >= threshold)
    return {"target": name, "measured": measured, "met": met, "where": where}


def shared_recipe(records: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(dotted params every cell ran with, params beyond the grid's axes that vary, with their values)."""
    flat = [flatten(ran_with(r)) for r in records]
    keys = sorted(set().union(*flat)) if flat else []
    shared = {k: flat[0].get(k) for k in keys if all(f.get(k) == flat[0].get(k) for f in flat)}
    varying = {k: sorted({str(f.get(k)) for f in flat}) for k in keys if k not in shared and k not in GRID_AXES}
    return shared, varying


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def mean_std(row: dict[str, Any], key: str, digits: int = 4) -> str:
    """``mean ± std`` over seeds; a single seed has no spread to show."""
    if row["seeds"] == 1:
        return f"{row[key]:.{digits}f}"
    return f"{row[key]:.{digits}f} ± {row[key + '_std']:.{digits}f}"


def ci_text(interval: dict[str, float]) -> str:
    return f"[{interval['low']:.3f}, {interval['high']:.3f}]"


def markdown(report: dict[str, Any], command: str, store: str) -> str:
    shared, varying = report["recipe"], report["recipe_varies"]
    lines = [
        "# Transfer-learning study: strategy x training-data fraction",
        "",
        f"{len(report['cells'])} of the current grid's {report['planned']} cells, read from their records in `{store}` "
        f"({report['other_records']} records of other recipes there are not shown). Rebuild exactly this "
        f"report with `{command}`; it trains nothing and rechecks every figure against the cells' test predictions.",
        "",
        f"Recipe every cell ran with: {shared.get('model.architecture')}, {shared.get('data.image_size')} px, "
        f"up to {shared.get('train.epochs')} epochs (early stopping on validation "
        f"{shared.get('train.selection_metric')}), lr {shared.get('train.lr')}, EMA horizon "
        f"{shared.get('train.ema_epochs')} epochs, augmentation {shared.get('train.augment.preset')}, "
        f"calibration {shared.get('train.calibration')}; the full list is `recipe` in `results.json`. "
        + "Beyond the grid's axes, "
        + (", ".join(f"`{k}` is {' or '.join(v)}" for k, v in varying.items()) or "nothing varies")
        + " (scratch: random init, nothing frozen).",
        "",
        "Majority-class baseline (always the most common test class): "
        + ", ".join(f"{task} {value:.4f}" for task, value in report["majority_baseline"].items())
        + ". Mean ± sample std over seeds; in brackets the 95 % bootstrap interval of the seed mean over test "
        f"images ({stats.RESAMPLES} resamples, the same for every row): how much the figure depends on which "
        "images were tested, not on the seeds, whose spread is the ± column. Training time is wall-clock on the "
        "machine in each record (`machine`), including feature caching where a cell was the first to need it.",
        "",
        "| task | strategy | train fraction | seeds | test accuracy | 95 % CI | test macro-F1 | 95 % CI "
        "| train s | epochs to best val |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["table"]:
        lines.append(
            f"| {row['classes']}-class | {row['strategy']} | {row['fraction']:g} | {row['seeds']} | "
            f"{mean_std(row, 'accuracy')} | {ci_text(row['accuracy_ci'])} | {mean_std(row, 'macro_f1')} | "
            f"{ci_text(row['macro_f1_ci'])} | {mean_std(row, 'train_seconds', 0)} | {mean_std(row, 'best_epoch', 1)} |"
        )
    if report["margins"]:
        lines += [
            "",
            "## Pretrained vs scratch (binary task, mean test accuracy)",
            "",
            "The interval is paired: both sides are scored on the same resampled test images.",
            "",
            "| train fraction | best pretrained | accuracy | scratch | margin | 95 % CI |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {m['fraction']:g} | {m['best_pretrained']} | {m['pretrained_accuracy']:.4f} | "
            f"{m['scratch_accuracy']:.4f} | {m['margin']:+.4f} | {ci_text(m['margin_ci'])} |"
            for m in report["margins"]
        ]
    lines += ["", "## Targets", "", "| target | measured | where | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        measured = "not run yet" if t["measured"] is None else f"{t['measured']:.4f}"
        met = {None: "-", True: "yes", False: "**no**"}[t["met"]]
        lines.append(f"| {t['target']} | {measured} | {t['where'] or '-'} | {met} |")
    if report["failed"]:
        lines += ["", "## Failed cells (rerun the study to retry them)", ""]
        lines += [f"- `{f['name']}`: {f['error']}" for f in report["failed"]]
    for name in report["figures"]:
        lines += ["", f"![{name[:-4].replace('_', ' ')}]({name})"]
    return "\n".join(lines) + "\n"


def plot_accuracy_vs_fraction(rows: list[dict[str, Any]], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    binary = [r for r in rows if r["classes"] == 2]
    for strategy in sorted({r["strategy"] for r in binary}):
        points = [r for r in binary if r["strategy"] == strategy]
        x = [100 * r["fraction"] for r in points]
        line = axis.errorbar(
            x, [r["accuracy"] for r in points], yerr=[r["accuracy_std"] for r in points], marker="o", capsize=3
        )
        line.set_label(strategy)
        axis.fill_between(
            x,
            [r["accuracy_ci"]["low"] for r in points],
            [r["accuracy_ci"]["high"] for r in points],
            color=line.lines[0].get_color(),
            alpha=0.12,
        )
    percents = sorted({100 * r["fraction"] for r in binary})
    axis.set(xscale="log", xlabel="training data used (%)", ylabel="test accuracy")
    axis.set_xticks(percents, labels=[f"{p:g}" for p in percents])
    axis.minorticks_off()
    axis.set_title("ELPV binary: mean ± std over seeds; band: 95 % bootstrap CI", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    save_figure(figure, path)


def plot_accuracy_vs_time(rows: list[dict[str, Any]], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    binary = [r for r in rows if r["classes"] == 2]
    for strategy in sorted({r["strategy"] for r in binary}):
        points = [r for r in binary if r["strategy"] == strategy]
        axis.errorbar(
            [r["train_seconds"] for r in points],
            [r["accuracy"] for r in points],
            xerr=[r["train_seconds_std"] for r in points],
            yerr=[r["accuracy_std"] for r in points],
            marker="o",
            capsize=3,
            linestyle="none",
            label=strategy,
        )
        for r in points:
            axis.annotate(f"{100 * r['fraction']:g}%", (r["train_seconds"], r["accuracy"]), fontsize=7, alpha=0.7)
    axis.set(xscale="log", xlabel="training time (s, log)", ylabel="test accuracy")
    axis.set_title("ELPV binary: accuracy vs training time (mean ± std over seeds)", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend()
    save_figure(figure, path)


def plot_confusion_4class(groups: list[Group], rows: list[dict[str, Any]], path: Path) -> bool:
    """Confusion matrix of the best 4-class strategy, summed over its seeds; False if none ran."""
    four = [(g, r) for g, r in zip(groups, rows, strict=True) if g.classes == 4]
    if not four:
        return False
    group, row = max(four, key=lambda pair: pair[1]["accuracy"])
    names = group.records[0]["data"]["class_names"]
    matrix = sum(
        np.bincount(group.labels * len(names) + run, minlength=len(names) ** 2).reshape(len(names), -1)
        for run in group.runs
    )
    title = f"4-class, {group.strategy} (sum over {row['seeds']} seeds): accuracy {row['accuracy']:.3f}"
    save_figure(confusion_matrix_figure(matrix.tolist(), names, title), path)
    return True


def check_report_folder(params: Params) -> None:
    """Refuse to overwrite another store's report, before any cell trains: a recipe try run with
    only ``study.store`` changed would otherwise replace the grid's committed report with its own
    few cells."""
    existing = Path(params.study.report) / "results.json"
    if not existing.is_file():
        return
    owner = read_json(existing).get("store")
    if owner is not None and Path(owner) != Path(params.study.store):
        raise ConfigError(
            f"{params.study.report} holds the report of the cells in {owner}, not {params.study.store}; "
            "give this store its own report folder, e.g. -S study.report=studies/recipes/report"
        )


def write_report(params: Params, command: str) -> dict[str, Any]:
    """Build the report in ``study.report`` from the store's records of the current grid; returns it."""
    out = Path(params.study.report)
    records, failures, others = current_records(params)
    if not records and not failures:
        raise ConfigError(
            f"no records of this grid in {params.study.store}; run `transferkit study` first "
            f"({others} records of other recipes are there)"
        )
    groups = groups_of(records)
    rows = [summarize(g) for g in groups]
    margin_rows = margins(groups, rows)
    shared, varying = shared_recipe(records)
    figures = list(FIGURES[:2]) if rows else []
    if rows:
        plot_accuracy_vs_fraction(rows, out / FIGURES[0])
        plot_accuracy_vs_time(rows, out / FIGURES[1])
    if plot_confusion_4class(groups, rows, out / FIGURES[2]):
        figures.append(FIGURES[2])
    report = {
        "command": command,
        "store": params.study.store,
        "cells": [{"name": r["name"], "key": r["key"]} for r in records],
        "planned": len(study_cells(params.study)),
        "other_records": others,
        "failed": failures,
        "recipe": shared,
        "recipe_varies": varying,
        "majority_baseline": majority_baselines(groups),
        "table": rows,
        "margins": margin_rows,
        "targets": targets(rows, margin_rows),
        "figures": figures,
    }
    write_json(out / "results.json", report)
    write_text(out / "README.md", markdown(report, command, params.study.store))
    return report
