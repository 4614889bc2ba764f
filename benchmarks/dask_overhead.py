"""What running study cells as Prefect tasks on Dask costs, against calling the cell in-process.

The same cells (shrunk config: a 160-image ELPV subset, 64 px, 2 epochs; linear and finetune x
2 seeds), side by side in one run, rounds alternating:
- in-process: ``run_cell`` called directly, one after the other;
- Dask, per cell: the ``study-grid`` flow on a running one-worker ``LocalCluster`` that has run
  the grid once already (the flow run and every task run's API calls included);
- Dask, once per study: the same flow on a fresh cluster (what `transferkit study` does), whose
  extra time over the warm run is the cluster's start and its worker's first imports.
The feature cache is warmed first and shared, so all modes do the same work per cell.

    PYTHONPATH=benchmarks:. DO_NOT_TRACK=1 PREFECT_HOME=$(mktemp -d) .venv/bin/python benchmarks/dask_overhead.py
    ... benchmarks/dask_overhead.py --image-size 224 --rounds 2    # longer cells, closer to a real study's

Writes benchmarks/results/dask_overhead[-<size>px].json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from results import write_results
from transferkit.config import parse_params, set_dotted
from transferkit.dask_runner import dask_task_runner, local_cluster, shared_prefect_api
from transferkit.data.elpv import materialize_elpv
from transferkit.study.grid import Cell, base_raw
from transferkit.study.runner import prepare_tasks, run_cell, study_grid

PROJECT = Path(__file__).resolve().parents[1]
SHRUNK = {"data.image_size": 64, "train.epochs": 2, "train.batch_size": 16}
CELLS = [Cell(2, strategy, 1.0, seed) for strategy in ("linear", "finetune") for seed in (0, 1)]


def shrunk_base(work: Path, image_size: int = 64) -> dict[str, Any]:
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for key, value in {**SHRUNK, "data.image_size": image_size}.items():
        set_dotted(raw, key, value)
    raw["data"]["path"] = str(work / "elpv")
    raw["paths"]["feature_cache"] = str(work / "feature-cache")
    return base_raw(parse_params(raw))


def in_process(base: dict[str, Any], root: Path) -> float:
    prepare_tasks(base, CELLS, root)
    started = time.perf_counter()
    for cell in CELLS:
        _, error = run_cell(base, cell, root, None)
        assert error is None, error
    return time.perf_counter() - started


def on_dask(base: dict[str, Any], root: Path, address: str | None) -> float:
    prepare_tasks(base, CELLS, root)
    started = time.perf_counter()
    outcome = study_grid.with_options(task_runner=dask_task_runner(1, address))(base, CELLS, str(root), None)
    seconds = time.perf_counter() - started
    assert not outcome.failed and len(outcome.done) == len(CELLS), outcome
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=SHRUNK["data.image_size"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        materialize_elpv(work / "elpv", limit=160, seed=0)
        base = shrunk_base(work, args.image_size)
        in_process(base, work / "warm-up")  # fills the shared feature cache, imports everything
        local, warm, cold = [], [], []
        cluster = local_cluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
        with shared_prefect_api(), cluster:  # the study's own Prefect set-up, started once as a study run does
            on_dask(base, work / "dask-warm-up", cluster.scheduler_address)
            for round_ in range(args.rounds):
                local.append(in_process(base, work / f"local-{round_}"))
                warm.append(on_dask(base, work / f"warm-{round_}", cluster.scheduler_address))
                cold.append(on_dask(base, work / f"cold-{round_}", None))
    local_s, warm_s, cold_s = (statistics.median(times) for times in (local, warm, cold))
    result = {
        "cells": len(CELLS),
        "config": SHRUNK | {"data.image_size": args.image_size, "images": 160},
        "in_process_s": round(local_s, 2),
        "dask_warm_s": round(warm_s, 2),
        "dask_fresh_cluster_s": round(cold_s, 2),
        "overhead_per_cell_s": round((warm_s - local_s) / len(CELLS), 3),
        "overhead_per_cell_ratio": round(warm_s / local_s - 1, 4),
        "fixed_cost_per_study_s": round(cold_s - warm_s, 2),
        "rounds": {"in_process": local, "dask_warm": warm, "dask_fresh_cluster": cold},
    }
    lines = [
        f"| {len(CELLS)} cells, shrunk config at {args.image_size} px (median of {args.rounds} rounds) | seconds |",
        "|---|---|",
        f"| in-process `run_cell`, one after the other | {result['in_process_s']} |",
        f"| `study-grid` flow, running 1-worker LocalCluster | {result['dask_warm_s']} |",
        f"| `study-grid` flow, fresh LocalCluster (as `transferkit study`) | {result['dask_fresh_cluster_s']} |",
        f"| overhead per cell, warm cluster | {result['overhead_per_cell_s']} "
        f"({result['overhead_per_cell_ratio']:.1%}) |",
        f"| fixed cost per study run (cluster start, worker imports) | {result['fixed_cost_per_study_s']} |",
    ]
    default = args.image_size == SHRUNK["data.image_size"]
    write_results("dask_overhead" if default else f"dask_overhead-{args.image_size}px", result, lines)


if __name__ == "__main__":
    main()
