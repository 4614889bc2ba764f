"""Run the study's cells: finished cells are skipped, failed cells are recorded, others go on.

Each cell is a Prefect task on Dask (``transferkit.dask_runner``): a local cluster of ``jobs``
worker processes, or the cluster at ``dask_address``. A cell is self-contained: it reads the
prepared data and writes ``result.json`` (or ``error.json``) into its own folder only after it
ends, by rename. So a cell whose worker dies is simply run again (by Dask on another worker, or
by the task's retries), and an interrupted study resumes with the cells it did not finish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from tqdm import tqdm

from transferkit.config import Params
from transferkit.dask_runner import dask_task_runner, shared_prefect_api, threads_per_job
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


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, task_run_name="cell {cell.name}")
def cell_task(base: dict[str, Any], cell: Cell, root: str, threads: int | None) -> tuple[str, str | None]:
    """One cell on a Dask worker. A cell's own failure is recorded, not raised, so the retries
    only ever rerun a cell whose worker or connection was lost."""
    return run_cell(base, cell, Path(root), threads)


@flow(name="study-grid")
def study_grid(base: dict[str, Any], cells: list[Cell], root: str, threads: int | None) -> StudyRun:
    # Only module-level names here: Dask pickles this function (with the flow run's context) by value.
    return collect([cell_task.submit(base, cell, root, threads) for cell in cells])


def collect(futures: list[PrefectFuture[tuple[str, str | None]]]) -> StudyRun:
    """Wait for the cells as they finish, with a progress bar; failed cells are named, not raised."""
    outcome = StudyRun()
    with tqdm(total=len(futures), desc="study cells", unit="cell") as progress:
        for future in as_completed(futures):
            name, error = future.result()
            if error is None:
                outcome.done.append(name)
            else:
                outcome.failed[name] = error
                console.print(f"[yellow]cell {name} failed: {error}[/]", highlight=False)
            progress.update()
    return outcome


def run_study(params: Params, jobs: int | None = None, dask_address: str | None = None) -> StudyRun:
    root = Path(params.study.root)
    base = base_raw(params)
    claim_root(root, base)
    cells = study_cells(params.study)
    pending = [cell for cell in cells if not (root / "cells" / cell.name / RESULT).is_file()]
    skipped = [cell.name for cell in cells if cell not in pending]
    console.print(f"study {root}: {len(cells)} cells, {len(skipped)} already done, {len(pending)} to run")
    if not pending:
        return StudyRun(skipped=skipped)
    prepare_tasks(base, pending, root)
    workers = min(jobs or params.study.jobs, len(pending))
    runner = dask_task_runner(workers, dask_address)
    with shared_prefect_api():
        grid = study_grid.with_options(task_runner=runner)
        outcome = grid(base, pending, str(root.resolve()), threads_per_job(workers, dask_address))
    outcome.skipped = skipped
    return outcome
