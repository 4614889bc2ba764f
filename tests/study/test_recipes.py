"""The recipe search's table: tries grouped by how their params differ from the study's recipe, seeds
together, each compared with the study's own cells on the same seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import record_of
from transferkit.config import Params, parse_params
from transferkit.io import read_json, write_json
from transferkit.study.grid import Cell, base_raw, cell_params
from transferkit.study.recipes import STUDY_RECIPE, write_recipes
from transferkit.study.store import cell_key, identity, write_record


def tried(store: Path, params: Params, seed: int, seconds: float, perfect: bool = False) -> None:
    """A finished cell of the binary task (``params``' strategy and fraction), as the study writes it."""
    record = record_of(params.model_dump(mode="json")) | {
        "name": Cell(2, params.train.strategy, params.train.fraction, seed).name,
        "classes": 2,
        "strategy": params.train.strategy,
        "fraction": params.train.fraction,
        "seed": seed,
        "training": {"train_seconds": seconds, "cell_seconds": seconds + 10, "best_epoch": 3},
    }
    record["params"], record["key"] = identity(params), cell_key(params)
    if perfect:
        record["test"]["predicted"] = record["test"]["labels"]
        record["metrics"] = {"accuracy": 1.0, "macro_f1": 1.0}
    write_record(store / f"{record['name']}-{record['key']}.json", record)


def test_seeds_of_a_recipe_are_one_row_named_by_what_differs(tmp_path: Path) -> None:
    # The pipeline has moved to 300 px while the grid stays pinned at 224 px: rows are named, and
    # compared, against the grid's recipe.
    study = {"store": str(tmp_path / "study"), "root": str(tmp_path / "work"), "overrides": {"data.image_size": 224}}
    reference = parse_params({"data": {"image_size": 300}, "study": study})
    store = tmp_path / "cells"
    for seed, seconds in ((1, 100.0), (2, 120.0)):  # the study's recipe on seeds beyond the grid's
        tried(store, parse_params({"data": {"image_size": 224}, "train": {"seed": seed}}), seed, seconds)
    for seed in (0, 1, 5):  # the study's recipe never ran seed 5
        tried(store, parse_params({"data": {"image_size": 300}, "train": {"seed": seed}}), seed, 250.0, seed == 5)
    study_cell = cell_params(base_raw(reference), Cell(2, "finetune", 1.0, 0), tmp_path / "work")
    tried(tmp_path / "study", study_cell, 0, 90.0, perfect=True)
    gradual = cell_params(base_raw(reference), Cell(2, "gradual", 0.1, 3), tmp_path / "work")
    tried(store, gradual, 3, 30.0)  # the study's recipe at another cell, beyond the grid's seeds

    # An ensemble of the 300 px seeds 0 and 1 with TTA, as `transferkit ensemble --record` keeps it.
    members = [parse_params({"data": {"image_size": 300}, "train": {"seed": seed}}) for seed in (0, 1)]
    labels = record_of({})["test"]["labels"]
    write_json(
        tmp_path / "ensembles" / "tta.json",
        {
            "members_trained": [
                {"params": m.model_dump(mode="json", include={"data", "model", "train"}), "train_seconds": 250.0}
                | {"best_epoch": 3}
                for m in members
            ],
            "tta_views": list(range(8)),
            "classes": 2,
            "ms_per_image_batch8": {"ensemble": 80.0, "one_member": 10.0},
            "seconds": 20.0,
            "test": {"labels": labels, "predicted": labels},
        },
    )

    rows = write_recipes(reference, store, tmp_path / "ensembles", tmp_path / "out", "transferkit recipes")

    by_recipe = {row["recipe"]: row for row in rows}
    ensemble = "data.image_size=300; ensemble of 2 + TTA (8 views)"
    assert {label: row["seeds"] for label, row in by_recipe.items()} == {
        STUDY_RECIPE: 2,
        "train.fraction=0.1, train.strategy=gradual": 1,
        "data.image_size=300": 3,
        ensemble: 1,
    }
    assert by_recipe[STUDY_RECIPE]["train_seconds"] == 110.0
    assert by_recipe["data.image_size=300"]["cell_seconds"] == 260.0
    # Seed 0 of the study's recipe is in the study store (a perfect score), seed 1 in the recipe store
    # (0.8): the 300 px tries of those seeds (0.8 each) are compared with both; seed 5 (a perfect
    # score) has no twin and stays out of the margin.
    versus = by_recipe["data.image_size=300"]
    assert (versus["study_seeds"], versus["study_accuracy"]) == (2, 0.9)
    assert versus["margin"] == pytest.approx(-0.1) and versus["margin_ci"]["high"] <= 0.0
    assert by_recipe[STUDY_RECIPE]["study_seeds"] == 0  # not compared with itself
    assert by_recipe["train.fraction=0.1, train.strategy=gradual"]["study_seeds"] == 0  # nor here
    # The ensemble: accuracy from its own predictions, both members' training, 8x the inference of
    # one model, compared with the study's recipe at its members' seeds.
    row = by_recipe[ensemble]
    assert (row["accuracy"], row["train_seconds"], row["cell_seconds"], row["inference_cost"]) == (1.0, 500, 520, 8)
    assert (row["study_seeds"], row["margin"]) == (2, pytest.approx(0.1))
    assert read_json(tmp_path / "out" / "results.json")["command"] == "transferkit recipes"
    assert "| data.image_size=300 | 3 | 0.8667 ± 0.1155 |" in (tmp_path / "out" / "README.md").read_text()
