"""The recipe search's table: tries grouped by how their params differ from the pipeline's, seeds together."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_study_store import record_of
from transferkit.config import parse_params
from transferkit.io import read_json
from transferkit.study.recipes import PIPELINE, write_recipes
from transferkit.study.store import write_record


def tried(store: Path, params_raw: dict, seed: int, seconds: float) -> None:
    raw = {**params_raw, "train": {**params_raw.get("train", {}), "seed": seed}}
    record = record_of(raw) | {
        "classes": 2,
        "strategy": "finetune",
        "fraction": 1.0,
        "seed": seed,
        "training": {"train_seconds": seconds, "cell_seconds": seconds + 10, "best_epoch": 3},
    }
    record["name"] = f"2class-finetune-f1-s{seed}"
    write_record(store / f"{record['name']}-{record['key']}.json", record)


def test_seeds_of_a_recipe_are_one_row_named_by_what_differs(tmp_path: Path) -> None:
    store = tmp_path / "cells"
    tried(store, {}, 0, 100.0)
    tried(store, {}, 1, 120.0)
    tried(store, {"data": {"image_size": 300}}, 0, 250.0)
    rows = write_recipes(parse_params({}), store, tmp_path / "out", "transferkit recipes")
    assert {row["recipe"]: row["seeds"] for row in rows} == {PIPELINE: 2, "data.image_size=300": 1}
    by_recipe = {row["recipe"]: row for row in rows}
    assert by_recipe[PIPELINE]["train_seconds"] == 110.0
    assert by_recipe["data.image_size=300"]["cell_seconds"] == 260.0
    assert read_json(tmp_path / "out" / "results.json")["command"] == "transferkit recipes"
    assert "| data.image_size=300 | 1 | 0.8000 |" in (tmp_path / "out" / "README.md").read_text()
