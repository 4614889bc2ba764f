"""The study's cells and the pipeline params each one runs with.

A cell is the pipeline's own params, the study's ``overrides``, and its task, strategy, training
fraction and seed. Cells of one task share the prepared data (the same split and test set) and
the feature cache, so frozen-backbone cells reuse cached features.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transferkit.config import Params, StudyParams, parse_params, set_dotted
from transferkit.errors import ConfigError
from transferkit.io import read_json, write_json

RESULT, ERROR, STUDY = "result.json", "error.json", "study.json"


@dataclass(frozen=True)
class Cell:
    classes: int
    strategy: str
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.classes}class-{self.strategy}-f{self.fraction:g}-s{self.seed}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "name": self.name}


def study_cells(study: StudyParams) -> list[Cell]:
    """Binary task: every strategy x fraction x seed; 4-class task: every strategy at 100 %."""
    cells = [Cell(2, s, f, seed) for s in study.strategies for f in study.fractions for seed in study.seeds]
    if study.four_class:
        cells += [Cell(4, s, 1.0, seed) for s in study.strategies for seed in study.seeds]
    return cells


def base_raw(params: Params) -> dict[str, Any]:
    """The params every cell starts from: the pipeline's, with the study's overrides applied."""
    raw = params.model_dump(mode="json")
    for key, value in params.study.overrides.items():
        set_dotted(raw, key, value)
    return raw


def cell_params(base: dict[str, Any], cell: Cell, root: Path, threads: int | None = None) -> Params:
    """Params of one cell; ``threads`` shares the cores between parallel cells (results do not depend on it)."""
    raw = copy.deepcopy(base)
    if threads:
        set_dotted(raw, "train.num_threads", threads)
    for key, value in {
        "data.classes": cell.classes,
        "train.strategy": cell.strategy,
        "train.fraction": cell.fraction,
        "train.seed": cell.seed,
    }.items():
        set_dotted(raw, key, value)
    if cell.strategy == "scratch":  # random init, nothing frozen, nothing to cache
        set_dotted(raw, "model.weights", "none")
        set_dotted(raw, "train.frozen_units", 0)
    prepared = root / f"prepared-{cell.classes}class"
    out = root / "cells" / cell.name
    raw["paths"].update(
        {
            "prepared": str(prepared / "data"),
            "data_report": str(prepared / "report.json"),
            "data_summary": str(prepared / "report.md"),
            "train": str(out / "model"),
            "checkpoints": str(out / "checkpoints"),
            "train_reports": str(out / "train"),
            "evaluate": str(out / "evaluate"),
            "test_logits": str(out / "test_logits.npy"),
        }
    )
    return parse_params(raw)


def claim_root(root: Path, base: dict[str, Any]) -> None:
    """Tie ``root`` to these params, so that a rerun never mixes cells of different configurations."""
    identity = {key: value for key, value in base.items() if key not in {"study", "gate", "export"}}
    record = root / STUDY
    if record.is_file():
        if read_json(record) != identity:
            raise ConfigError(
                f"{root} holds a study run with different params; set study.root to a new folder "
                "(or delete this one) to start over"
            )
        return
    write_json(record, identity)
