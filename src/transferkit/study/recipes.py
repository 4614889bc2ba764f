"""The recipe search's table: every try in a results store, grouped by how it differs from the study's recipe.

A try is a study cell run with ``study.overrides`` (``transferkit study -S study.store=...``), so
its record keeps the params it ran with, its cost and its test predictions, tries accumulate
across machines and sessions like the grid, and a fresh clone rebuilds this table from the
records alone (``transferkit recipes``). Seeds of one recipe are one row, with the same
statistics as the study report.

The reference is the study's recipe (params.yaml with ``study.overrides``), not params.yaml
alone: the grid may pin params that the pipeline's default has since moved on from (the grid
ran at 224 px; the default is now 300 px), and each try is compared with the grid's cells.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.config import Params, parse_params
from transferkit.io import write_json, write_text
from transferkit.study import stats
from transferkit.study.grid import Cell, base_raw, cell_params
from transferkit.study.report import Group, ci_text, flatten, mean_std, summarize
from transferkit.study.store import decode_labels, find, identity, load_records, ran_with

STUDY_RECIPE = "the study's recipe (params.yaml + study.overrides)"


def recipe_label(record: dict[str, Any], reference: dict[str, Any]) -> str:
    """The dotted params where ``record`` ran differently from ``reference`` (flattened), seed aside."""
    ran = flatten(ran_with(record))
    changed = {key: value for key, value in ran.items() if key != "train.seed" and reference.get(key) != value}
    return ", ".join(f"{key}={value}" for key, value in sorted(changed.items())) or STUDY_RECIPE


def study_twins(group: Group, params: Params, stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The study store's cells of the study's own recipe with ``group``'s task, strategy, fraction and seeds."""
    base, root = base_raw(params), Path(params.study.root)
    cells = [Cell(group.classes, group.strategy, group.fraction, r["seed"]) for r in group.records]
    found = [find(stored, cell.name, cell_params(base, cell, root)) for cell in cells]
    return [record for record in found if record is not None]


def versus_study(group: Group, twins: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracy minus the study recipe's on the same seeds, with a paired interval over test images."""
    if not twins or not all(np.array_equal(decode_labels(t["test"]["labels"]), group.labels) for t in twins):
        return {"study_seeds": 0}  # no twin, or one scored on another test set: nothing to pair with
    study = Group(group.classes, group.strategy, group.fraction, twins)
    study_accuracy = float(study.values("metrics", "accuracy").mean())
    return {
        "study_seeds": len(twins),
        "study_accuracy": study_accuracy,
        "margin": float(group.values("metrics", "accuracy").mean()) - study_accuracy,
        "margin_ci": stats.margin_interval(group.labels, group.runs, study.runs, group.classes).as_dict(),
    }


def recipe_rows(records: list[dict[str, Any]], reference: Params) -> list[dict[str, Any]]:
    """One row per recipe, best mean test accuracy first, each against the study's recipe on the
    seeds where it ran: the grid's cells (``study.store`` of ``reference``) and, for seeds beyond the
    grid's, the study's recipe tried in this store."""
    baseline = flatten(identity(parse_params(base_raw(reference))))
    stored = [*load_records(Path(reference.study.store)), *records]
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[recipe_label(record, baseline)].append(record)
    rows = []
    for label, runs in grouped.items():
        first = runs[0]
        group = Group(first["classes"], first["strategy"], first["fraction"], sorted(runs, key=lambda r: r["seed"]))
        cell_seconds = sum(r["training"]["cell_seconds"] for r in runs) / len(runs)
        own = label == STUDY_RECIPE  # its twins are itself
        comparison = {"study_seeds": 0} if own else versus_study(group, study_twins(group, reference, stored))
        rows.append({"recipe": label, **summarize(group), "cell_seconds": cell_seconds, **comparison})
    return sorted(rows, key=lambda row: -row["accuracy"])


def _versus_text(row: dict[str, Any]) -> str:
    if not row["study_seeds"]:
        return "-"
    seeds = row["study_seeds"]
    return f"{row['margin']:+.4f} {ci_text(row['margin_ci'])} ({seeds} seed{'s' if seeds > 1 else ''})"


def write_recipes(reference: Params, store: Path, out: Path, command: str) -> list[dict[str, Any]]:
    """``out``/results.json and README.md: the table of every recipe tried in ``store``."""
    rows = recipe_rows(load_records(store), reference)
    write_json(out / "results.json", {"command": command, "recipes": rows})
    lines = [
        "# Recipe search",
        "",
        f"Rebuilt from the records in `{store}` with `{command}`. Each row is one recipe: the",
        "params where its tries ran differently from the study's recipe (params.yaml with",
        "`study.overrides`; seed aside). Accuracy and macro-F1 are test-split means ± std over seeds,",
        "with the 95 % bootstrap interval over test images; seconds are per try (training alone, and",
        "the whole cell), with the threads and machine each record names. The last column is the mean",
        "accuracy minus the study's recipe on the same task, strategy, fraction and seeds (its cells",
        "in `study.store`, or its own tries here for seeds beyond the grid's), with a paired 95 %",
        "interval: both sides scored on the same resampled test images.",
        "",
        "| recipe | seeds | accuracy | 95 % CI | macro-F1 | 95 % CI | train s | cell s | vs the study's recipe |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {row['recipe']} | {row['seeds']} | {mean_std(row, 'accuracy')} | {ci_text(row['accuracy_ci'])} | "
            f"{mean_std(row, 'macro_f1')} | {ci_text(row['macro_f1_ci'])} | {row['train_seconds']:.0f} | "
            f"{row['cell_seconds']:.0f} | {_versus_text(row)} |"
            for row in rows
        ),
    ]
    write_text(out / "README.md", "\n".join(lines) + "\n")
    return rows
