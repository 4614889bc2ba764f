"""Run the study's cells: finished cells are skipped, failed cells are recorded, others go on.

Each cell writes ``result.json`` (or ``error.json``) into its own folder only after it ends, by
rename, so an interrupted study resumes with the cells it did not finish. ``jobs`` > 1 runs
cells in separate processes (spawned: a forked PyTorch is not safe).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from transferkit.config import Params
from transferkit.io import write_json
from transferkit.reporting import console
from transferkit.stages import evaluate, prepare, train
from transferkit.study.grid import ERROR, RESULT, Cell, base_raw, cell_params, claim_root, study_cells


@dataclass
class StudyRun:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_cell(base: dict[str, Any], cell: Cell, root: Path, threads: int | None) -> tuple[str, str | None]:
    """Train and evaluate one cell; returns (name, error message or None). Never raises."""
    out = root / "cells" / cell.name
    try:
        params = cell_params(base, cell, root, threads)
        started = time.perf_counter()
        summary = train.run(params)
        metrics = evaluate.run(params)
    except Exception as error:  # a failed cell must not take the others down; its error is kept
        message = f"{type(error).__name__}: {error}"
        write_json(out / ERROR, {**cell.as_dict(), "error": message})
        return cell.name, message
    write_json(
        out / RESULT,
        {
            **cell.as_dict(),
            "test_accuracy": metrics["accuracy"],
            "test_macro_f1": metrics["macro_f1"],
            "test_ece": metrics["ece"],
            "test_ece_uncalibrated": metrics["ece_uncalibrated"],
            "augment_preset": metrics["augment_preset"],
            "train_seconds": summary["train_seconds"],
            "cell_seconds": round(time.perf_counter() - started, 1),
            "best_epoch": summary["best_epoch"],
            "epochs_run": summary["epochs_run"],
            "train_images": summary["train_images"],
            "val_macro_f1": summary["val_macro_f1"],
        },
    )
    (out / ERROR).unlink(missing_ok=True)
    return cell.name, None


def prepare_tasks(base: dict[str, Any], cells: list[Cell], root: Path) -> None:
    """Prepare each task's data once (the same split and test set for all its cells)."""
    for classes in sorted({cell.classes for cell in cells}):
        marker = root / f"prepared-{classes}class" / "done"
        if not marker.is_file():
            prepare.run(cell_params(base, next(c for c in cells if c.classes == classes), root))
            marker.write_text("prepared\n")


def run_study(params: Params, jobs: int | None = None) -> StudyRun:
    root = Path(params.study.root)
    base = base_raw(params)
    claim_root(root, base)
    cells = study_cells(params.study)
    outcome = StudyRun()
    pending = []
    for cell in cells:
        if (root / "cells" / cell.name / RESULT).is_file():
            outcome.skipped.append(cell.name)
        else:
            pending.append(cell)
    console.print(f"study {root}: {len(cells)} cells, {len(outcome.skipped)} already done, {len(pending)} to run")
    if not pending:
        return outcome
    prepare_tasks(base, pending, root)
    workers = min(jobs or params.study.jobs, len(pending))
    threads = None if workers == 1 else max(1, (os.cpu_count() or 1) // workers)
    with tqdm(total=len(pending), desc="study cells", unit="cell") as progress:
        if workers == 1:
            finished = (run_cell(base, cell, root, threads) for cell in pending)
            _collect(finished, outcome, progress)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [pool.submit(run_cell, base, cell, root, threads) for cell in pending]
                _collect((future.result() for future in as_completed(futures)), outcome, progress)
    return outcome


def _collect(finished: Any, outcome: StudyRun, progress: tqdm) -> None:
    for name, error in finished:
        if error is None:
            outcome.done.append(name)
        else:
            outcome.failed[name] = error
            console.print(f"[yellow]cell {name} failed: {error}[/]", highlight=False)
        progress.update()
