"""The recipe search's table: tries grouped by how their params differ from the pipeline's, seeds together,
each compared with the pipeline's own cells on the same seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_study_store import record_of
from transferkit.config import Params, parse_params
from transferkit.io import read_json
from transferkit.study.grid import Cell, base_raw, cell_params
from transferkit.study.recipes import PIPELINE, write_recipes
from transferkit.study.store import cell_key, identity, write_record


def tried(store: Path, params: Params, seed: int, seconds: float, perfect: bool = False) -> None:
    """A finished finetune cell at 100 % of the binary task, as the study writes it."""
    record = record_of(params.model_dump(mode="json")) | {
        "name": f"2class-finetune-f1-s{seed}",
        "classes": 2,
        "strategy": "finetune",
        "fraction": 1.0,
        "seed": seed,
        "training": {"train_seconds": seconds, "cell_seconds": seconds + 10, "best_epoch": 3},
    }
    record["params"], record["key"] = identity(params), cell_key(params)
    if perfect:
        record["test"]["predicted"] = record["test"]["labels"]
        record["metrics"] = {"accuracy": 1.0, "macro_f1": 1.0}
    write_record(store / f"{record['name']}-{record['key']}.json", record)


def test_seeds_of_a_recipe_are_one_row_named_by_what_differs(tmp_path: Path) -> None:
    reference = parse_params({"study": {"store": str(tmp_path / "study"), "root": str(tmp_path / "work")}})
    store = tmp_path / "cells"
    for seed, seconds in ((0, 100.0), (1, 120.0)):
        tried(store, parse_params({"train": {"seed": seed}}), seed, seconds)
    tried(store, parse_params({"data": {"image_size": 300}, "train": {"seed": 0}}), 0, 250.0)
    pipeline_cell = cell_params(base_raw(reference), Cell(2, "finetune", 1.0, 0), tmp_path / "work")
    tried(tmp_path / "study", pipeline_cell, 0, 90.0, perfect=True)

    rows = write_recipes(reference, store, tmp_path / "out", "transferkit recipes")

    by_recipe = {row["recipe"]: row for row in rows}
    assert {label: row["seeds"] for label, row in by_recipe.items()} == {PIPELINE: 2, "data.image_size=300": 1}
    assert by_recipe[PIPELINE]["train_seconds"] == 110.0
    assert by_recipe["data.image_size=300"]["cell_seconds"] == 260.0
    # Only seed 0 of the pipeline's recipe is in the study store: the 300 px try is compared with it alone.
    versus = by_recipe["data.image_size=300"]
    assert (versus["pipeline_seeds"], versus["pipeline_accuracy"]) == (1, 1.0)
    assert versus["margin"] == pytest.approx(-0.2) and versus["margin_ci"]["high"] <= 0.0
    assert read_json(tmp_path / "out" / "results.json")["command"] == "transferkit recipes"
    assert "| data.image_size=300 | 1 | 0.8000 |" in (tmp_path / "out" / "README.md").read_text()
