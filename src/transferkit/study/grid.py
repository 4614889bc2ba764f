"""The study's cells and the pipeline params each one runs with.

A cell is the pipeline's own params, the study's ``overrides``, and its task, strategy, training
fraction and seed. Cells with the same data params share the prepared data (the same split and
test set) and the feature cache, so frozen-backbone cells reuse cached features.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transferkit.config import Params, StudyParams, parse_params, set_dotted
from transferkit.study.store import cell_key

ERROR = "error.json"


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
    """Params of one cell, its working folders under ``root``; ``threads`` shares the cores between
    parallel cells (results do not depend on it)."""
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
    # Folders named by content: a changed recipe never resumes another recipe's checkpoint and a
    # changed data section never reads another split.
    prepared = root / "prepared" / hashlib.sha256(json.dumps(raw["data"], sort_keys=True).encode()).hexdigest()[:12]
    out = root / "cells" / f"{cell.name}-{cell_key(parse_params(raw))}"
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
