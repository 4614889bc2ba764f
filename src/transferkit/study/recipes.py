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
from transferkit.io import read_json, write_json, write_text
from transferkit.study import stats
from transferkit.study.grid import Cell, base_raw, cell_params
from transferkit.study.report import Group, ci_text, flatten, mean_std, summarize
from transferkit.study.store import decode_labels, find, identity, load_records, ran_with, test_metrics

STUDY_RECIPE = "the study's recipe (params.yaml + study.overrides)"


def recipe_label(record: dict[str, Any], reference: dict[str, Any]) -> str:
    """The dotted params where ``record`` ran differently from ``reference`` (flattened), seed aside."""
    ran = flatten(ran_with(record))
    changed = {key: value for key, value in ran.items() if key != "train.seed" and reference.get(key) != value}
    return ", ".join(f"{key}={value}" for key, value in sorted(changed.items())) or STUDY_RECIPE


def ensemble_tries(folder: Path) -> list[dict[str, Any]]:
    """The ensembles kept by ``transferkit ensemble --record``, each as a try: its members' params and
    seeds, their summed training time, its own test predictions and its inference cost against one member."""
    tries = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        report = read_json(path)
        members = report["members_trained"]
        first = parse_params(members[0]["params"]).train
        # NaN (shown as "-") when a member's training time is unknown: no study record matched it.
        known = [m["train_seconds"] for m in members if m["train_seconds"] is not None]
        seconds = float(sum(known)) if len(known) == len(members) else float("nan")
        cost = report["ms_per_image_batch8"]
        tries.append(
            {
                "name": path.stem,
                "members": [identity(parse_params(m["params"])) for m in members],
                "member_seeds": [m["params"]["train"]["seed"] for m in members],
                "tta_views": len(report["tta_views"]),
                "classes": report["classes"],
                "strategy": first.strategy,
                "fraction": first.fraction,
                "seed": first.seed,
                "metrics": test_metrics(report["test"]),
                "test": report["test"],
                "training": {
                    "train_seconds": seconds,
                    "cell_seconds": seconds + report["seconds"],
                    "best_epoch": float(np.mean([m["best_epoch"] for m in members])),
                },
                "inference_cost": cost["ensemble"] / cost["one_member"],
            }
        )
    return tries


def _seconds_text(seconds: float) -> str:
    return "-" if np.isnan(seconds) else f"{seconds:.0f}"


def try_label(record: dict[str, Any], reference: dict[str, Any]) -> str:
    """A single model's recipe label; an ensemble's is its members' recipe, how many, and its TTA views."""
    if "members" not in record:
        return recipe_label(record, reference)
    recipes = " | ".join(sorted({recipe_label({"params": params}, reference) for params in record["members"]}))
    views = record["tta_views"]
    return f"{recipes}; ensemble of {len(record['members'])}" + (f" + TTA ({views} views)" if views > 1 else "")


def seeds_of(record: dict[str, Any]) -> list[int]:
    """The seeds a try trained: an ensemble's members', or the record's own."""
    return record.get("member_seeds", [record["seed"]])


def study_twins(group: Group, params: Params, stored: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """By seed, the stored cells of the study's own recipe with ``group``'s task, strategy, fraction and seeds."""
    base, root = base_raw(params), Path(params.study.root)
    twins = {}
    for seed in sorted({seed for r in group.records for seed in seeds_of(r)}):
        cell = Cell(group.classes, group.strategy, group.fraction, seed)
        if (record := find(stored, cell.name, cell_params(base, cell, root))) is not None:
            twins[seed] = record
    return twins


def versus_study(group: Group, twins: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean accuracy minus the study recipe's on the same seeds, with a paired interval over test
    images: only the tries whose seeds the study's recipe also ran take part, against those twins."""
    paired = [r for r in group.records if all(seed in twins for seed in seeds_of(r))]
    used = [twins[seed] for seed in sorted({seed for r in paired for seed in seeds_of(r)})]
    if not used or not all(np.array_equal(decode_labels(t["test"]["labels"]), group.labels) for t in used):
        return {"study_seeds": 0}  # no twin, or one scored on another test set: nothing to pair with
    tries = Group(group.classes, group.strategy, group.fraction, paired)
    study = Group(group.classes, group.strategy, group.fraction, used)
    study_accuracy = float(study.values("metrics", "accuracy").mean())
    return {
        "study_seeds": len(used),
        "study_accuracy": study_accuracy,
        "margin": float(tries.values("metrics", "accuracy").mean()) - study_accuracy,
        "margin_ci": stats.margin_interval(group.labels, tries.runs, study.runs, group.classes).as_dict(),
    }


def recipe_rows(
    records: list[dict[str, Any]], reference: Params, ensembles: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per recipe, best mean test accuracy first, each against the study's recipe on the
    seeds where it ran: the grid's cells (``study.store`` of ``reference``) and, for seeds beyond the
    grid's, the study's recipe tried in this store."""
    baseline = flatten(identity(parse_params(base_raw(reference))))
    stored = [*load_records(Path(reference.study.store)), *records]
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in [*records, *(ensembles or [])]:
        grouped[try_label(record, baseline)].append(record)
    rows = []
    for label, runs in grouped.items():
        first = runs[0]
        group = Group(first["classes"], first["strategy"], first["fraction"], sorted(runs, key=lambda r: r["seed"]))
        cell_seconds = sum(r["training"]["cell_seconds"] for r in runs) / len(runs)
        inference_cost = sum(r.get("inference_cost", 1.0) for r in runs) / len(runs)
        twins = study_twins(group, reference, stored)
        # The study's recipe, at any strategy and fraction, is its own twin: nothing to compare with.
        own = {run.get("key") for run in runs} <= {twin["key"] for twin in twins.values()}
        comparison = {"study_seeds": 0} if own else versus_study(group, twins)
        row = {"recipe": label, **summarize(group), "cell_seconds": cell_seconds, "inference_cost": inference_cost}
        rows.append(row | comparison)
    return sorted(rows, key=lambda row: -row["accuracy"])


def _versus_text(row: dict[str, Any]) -> str:
    if not row["study_seeds"]:
        return "-"
    seeds = row["study_seeds"]
    return f"{row['margin']:+.4f} {ci_text(row['margin_ci'])} ({seeds} seed{'s' if seeds > 1 else ''})"


def write_recipes(reference: Params, store: Path, ensembles: Path, out: Path, command: str) -> list[dict[str, Any]]:
    """``out``/results.json and README.md: the table of every recipe tried in ``store`` and every
    ensemble recorded in ``ensembles``."""
    rows = recipe_rows(load_records(store), reference, ensemble_tries(ensembles))
    write_json(out / "results.json", {"command": command, "recipes": rows})
    lines = [
        "# Recipe search",
        "",
        f"Rebuilt from the records in `{store}` and `{ensembles}` with `{command}`. Each row is one",
        "recipe: the params where its tries ran differently from the study's recipe (params.yaml with",
        "`study.overrides`; seed aside). Accuracy and macro-F1 are test-split means ± std over seeds",
        "(an ensemble row: over its ensembles), with the 95 % bootstrap interval over test images;",
        "seconds are per try (training alone, summed over an ensemble's members, and the whole try),",
        "with the threads and machine each record names; inference is the cost per image against one",
        "model (ONNX Runtime, batch 8). The last column is the mean accuracy minus the study's recipe",
        "on the same task, strategy, fraction and seeds (an ensemble's: its members' seeds; the cells",
        "in `study.store`, or its own tries here for seeds beyond the grid's), with a paired 95 %",
        "interval: both sides scored on the same resampled test images.",
        "",
        "| recipe | seeds | accuracy | 95 % CI | macro-F1 | 95 % CI | train s | try s | inference | "
        "vs the study's recipe |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {row['recipe']} | {row['seeds']} | {mean_std(row, 'accuracy')} | {ci_text(row['accuracy_ci'])} | "
            f"{mean_std(row, 'macro_f1')} | {ci_text(row['macro_f1_ci'])} | {_seconds_text(row['train_seconds'])} | "
            f"{_seconds_text(row['cell_seconds'])} | {row['inference_cost']:.1f}x | {_versus_text(row)} |"
            for row in rows
        ),
    ]
    write_text(out / "README.md", "\n".join(lines) + "\n")
    return rows
