"""Run the study's cells: cells already in the results store are skipped, failed cells are
recorded, the others go on.

Each cell is a Prefect task on Dask (``transferkit.dask_runner``): a local cluster of ``jobs``
worker processes, or the cluster at ``dask_address``. A cell trains in its own working folder
under ``study.root`` and, only when it has ended, writes its record into ``study.store`` by
rename. So a cell whose worker dies is simply run again (by Dask on another worker, or by the
task's retries), and an interrupted study resumes with the cells it did not finish.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from tqdm import tqdm

from transferkit.config import Params
from transferkit.dask_runner import dask_task_runner, shared_prefect_api, threads_per_job
from transferkit.data.cache import META_FILE, PreparedData
from transferkit.io import write_json
from transferkit.reporting import console
from transferkit.stages import evaluate, prepare, train
from transferkit.study.grid import ERROR, Cell, base_raw, cell_params, study_cells
from transferkit.study.store import (
    cell_key,
    encode_labels,
    find,
    identity,
    load_records,
    machine,
    record_path,
    write_record,
)

RECORDED_METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "roc_auc", "ece", "ece_uncalibrated")
RECORDED_TRAINING = (
    *("train_seconds", "best_epoch", "epochs_run", "val_macro_f1"),
    *("images_per_second", "temperature", "augment_preset"),
)


@dataclass
class StudyRun:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_cell(base: dict[str, Any], cell: Cell, root: Path, store: Path, threads: int | None) -> tuple[str, str | None]:
    """Train and evaluate one cell and store its record; returns (name, error message or None). Never raises."""
    params = cell_params(base, cell, root, threads)
    out = Path(params.paths.evaluate).parent
    try:
        started = time.perf_counter()
        summary = train.run(params)
        metrics = evaluate.run(params)
        record = cell_record(params, cell, summary, metrics, time.perf_counter() - started)
        write_record(record_path(store, cell.name, params), record)
    except Exception as error:  # a failed cell must not take the others down; its error is kept
        message = f"{type(error).__name__}: {error}"
        write_json(out / ERROR, {**cell.as_dict(), "error": message})
        return cell.name, message
    (out / ERROR).unlink(missing_ok=True)
    return cell.name, None


def cell_record(
    params: Params, cell: Cell, summary: dict[str, Any], metrics: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """What lasts of a cell: params as run, metrics, timings, machine, and its test predictions."""
    prepared = PreparedData.load(params.paths.prepared)
    names = prepared.class_names
    with (Path(params.paths.evaluate) / "predictions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    threads = params.train.num_threads
    labels = np.array([names.index(row["actual"]) for row in rows])
    predicted = np.array([names.index(row["predicted"]) for row in rows])
    return {
        **cell.as_dict(),
        "key": cell_key(params),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "params": identity(params),
        "data": {"content_hash": prepared.content_hash, "class_names": names, "train_images": summary["train_images"]},
        "metrics": {key: metrics[key] for key in RECORDED_METRICS},
        "training": {key: summary[key] for key in RECORDED_TRAINING} | {"cell_seconds": round(seconds, 1)},
        "machine": machine() | {"device": summary["device"], "precision": summary["precision"], "threads": threads},
        "test": {"labels": encode_labels(labels), "predicted": encode_labels(predicted)},
    }


def prepare_data(cell_runs: dict[Cell, Params]) -> dict[Cell, str]:
    """Prepare each distinct data folder once; returns every cell's prepared-data content hash."""
    hashes: dict[Cell, str] = {}
    for cell, params in cell_runs.items():
        if not (Path(params.paths.prepared) / META_FILE).is_file():
            prepare.run(params)
        hashes[cell] = PreparedData.load(params.paths.prepared).content_hash
    return hashes


def is_stored(records: list[dict[str, Any]], cell: Cell, params: Params, content_hash: str) -> bool:
    """A record of these params on this very data (a re-prepared dataset reruns the cell)."""
    record = find(records, cell.name, params)
    return record is not None and record["data"]["content_hash"] == content_hash


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE, task_run_name="cell {cell.name}")
def cell_task(base: dict[str, Any], cell: Cell, root: str, store: str, threads: int | None) -> tuple[str, str | None]:
    """One cell on a Dask worker. A cell's own failure is recorded, not raised, so the retries
    only ever rerun a cell whose worker or connection was lost."""
    return run_cell(base, cell, Path(root), Path(store), threads)


@flow(name="study-grid")
def study_grid(base: dict[str, Any], cells: list[Cell], root: str, store: str, threads: int | None) -> StudyRun:
    # Only module-level names here: Dask pickles this function (with the flow run's context) by value.
    return collect([cell_task.submit(base, cell, root, store, threads) for cell in cells])


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
    root, store = Path(params.study.root), Path(params.study.store)
    base = base_raw(params)
    cell_runs = {cell: cell_params(base, cell, root) for cell in study_cells(params.study)}
    # Cheapest first: pretrained cells read cached trunk features (minutes), from-scratch cells
    # train every unit live (about ten times longer), so those come last; then by task, fraction
    # and seed, so an interrupted grid leaves whole rows behind.
    cells = sorted(
        cell_runs,
        key=lambda c: (cell_runs[c].model.weights == "none", c.classes, c.fraction, c.seed, c.strategy),
    )
    hashes = prepare_data(cell_runs)
    records = load_records(store)
    pending = [cell for cell in cells if not is_stored(records, cell, cell_runs[cell], hashes[cell])]
    skipped = [cell.name for cell in cells if cell not in pending]
    console.print(f"study: {len(cells)} cells, {len(skipped)} already in {store}, {len(pending)} to run")
    if not pending:
        return StudyRun(skipped=skipped)
    workers = min(jobs or params.study.jobs, len(pending))
    runner = dask_task_runner(workers, dask_address)
    with shared_prefect_api():
        grid = study_grid.with_options(task_runner=runner)
        outcome = grid(base, pending, str(root.resolve()), str(store.resolve()), threads_per_job(workers, dask_address))
    outcome.skipped = skipped
    return outcome
