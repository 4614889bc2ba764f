"""The study grid on the shrunk config: a real 2 x 2 x 1 mini-grid on a 2-worker Dask LocalCluster,
its results store (skipping, keyed by params, rebuilt and checked without training), failure
isolation, and a worker killed mid-cell."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, run_tool, study_params

pytestmark = pytest.mark.slow

TRANSFERKIT = [sys.executable, "-m", "transferkit.cli"]


def stored(tmp_path: Path) -> dict[str, dict]:
    return {path.stem.rsplit("-", 1)[0]: json.loads(path.read_text()) for path in (tmp_path / "store").glob("*.json")}


def test_mini_grid_runs_reports_and_skips_stored_cells(tmp_path: Path, elpv_subset: Path, prefect_env) -> None:
    params = study_params(tmp_path, elpv_subset, strategies=["linear", "scratch"])
    run = run_tool([*TRANSFERKIT, "study", "-p", str(params)], REPO, env=prefect_env)
    assert "study-grid" in run.stdout + run.stderr  # the cells ran as a Prefect flow
    records = stored(tmp_path)
    assert sorted(records) == [
        "2class-linear-f0.5-s0",
        "2class-linear-f1-s0",
        "2class-scratch-f0.5-s0",
        "2class-scratch-f1-s0",
    ]
    record = records["2class-linear-f0.5-s0"]
    assert record["params"]["train"]["strategy"] == "linear" and record["params"]["train"]["epochs"] == 1
    assert len(record["test"]["labels"]) == len(record["test"]["predicted"]) > 0
    assert record["training"]["epochs_run"] == 1 and record["machine"]["cpus"] >= 1
    half, full = (records[f"2class-linear-f{f}-s0"]["data"]["train_images"] for f in ("0.5", "1"))
    assert half < full  # the fraction really shrinks the training set
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    assert len(report["table"]) == 4 and not report["failed"] and report["other_records"] == 0
    first = report["table"][0]
    assert first["accuracy_ci"]["low"] <= first["accuracy"] <= first["accuracy_ci"]["high"]
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "| 2-class | linear | 0.5 | 1 |" in readme
    assert f"transferkit study --report-only -p {params}" in readme
    assert (tmp_path / "report" / "accuracy_vs_fraction.png").stat().st_size > 10_000

    assert "| 0.5 | linear |" in readme and "95 % CI" in readme  # the pretrained-vs-scratch margins

    # A fresh clone has the committed records only: the same report, every figure rechecked.
    shutil.rmtree(tmp_path / "report")
    run_tool([*TRANSFERKIT, "study", "-p", str(params), "--report-only", "-S", "study.root=elsewhere"], REPO)
    assert (tmp_path / "report" / "README.md").read_text() == readme.replace(
        f"-p {params}", f"-p {params} -S study.root=elsewhere"
    )

    files = sorted((tmp_path / "store").glob("*.json"))
    before = [f.stat().st_mtime_ns for f in files]
    rerun = run_tool([*TRANSFERKIT, "study", "-p", str(params)], REPO, env=prefect_env)
    assert "4 already in" in rerun.stderr and "0 to run" in rerun.stderr
    assert [f.stat().st_mtime_ns for f in files] == before

    # A changed recipe is a new cell: it runs, and the earlier records stay as history, not in the report.
    changed = ("study.overrides={train.epochs: 2}", "study.fractions=[1.0]", "study.strategies=[linear]")
    run_tool([*TRANSFERKIT, "study", "-p", str(params), *(f"-S{item}" for item in changed)], REPO, env=prefect_env)
    assert len(list((tmp_path / "store").glob("2class-linear-f1-s0-*.json"))) == 2
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    assert len(report["cells"]) == 1 and report["other_records"] == 4
    assert report["recipe"]["train.epochs"] == 2

    # A recipe try with its own store must not overwrite this grid's report.
    before_report = (tmp_path / "report" / "results.json").read_bytes()
    try_store = f"study.store={tmp_path / 'tries'}"
    other = run_tool([*TRANSFERKIT, "study", "-p", str(params), "--report-only", "-S", try_store], REPO, False)
    assert other.returncode == 2 and "-S study.report=" in other.stderr
    assert (tmp_path / "report" / "results.json").read_bytes() == before_report

    edited = json.loads(files[0].read_text())
    edited["metrics"]["accuracy"] += 0.05
    files[0].write_text(json.dumps(edited))
    damaged = run_tool([*TRANSFERKIT, "study", "-p", str(params), "--report-only"], REPO, False)
    assert damaged.returncode == 2 and edited["name"] in damaged.stderr and "damaged" in damaged.stderr


def test_a_failed_cell_keeps_the_others(tmp_path: Path, elpv_subset: Path, prefect_env) -> None:
    # 1 % of ~100 training images cannot hold both classes: that cell fails, the other one runs.
    params = study_params(tmp_path, elpv_subset, strategies=["linear"], fractions=[0.01, 1.0], jobs=1)
    result = run_tool([*TRANSFERKIT, "study", "-p", str(params)], REPO, check=False, env=prefect_env)
    assert result.returncode == 1 and "1 cell(s) failed (2class-linear-f0.01-s0)" in result.stderr
    assert list(stored(tmp_path)) == ["2class-linear-f1-s0"]
    (error,) = (tmp_path / "study" / "cells").glob("2class-linear-f0.01-s0-*/error.json")
    assert "error" in json.loads(error.read_text())
    assert "2class-linear-f0.01-s0" in (tmp_path / "report" / "README.md").read_text()


def test_report_only_without_cells_says_what_to_do(tmp_path: Path, elpv_subset: Path) -> None:
    result = run_tool(
        [*TRANSFERKIT, "study", "-p", str(study_params(tmp_path, elpv_subset)), "--report-only"], REPO, False
    )
    assert result.returncode == 2 and "run `transferkit study` first" in result.stderr


def test_a_worker_killed_mid_cell_and_the_grid_still_completes(tmp_path: Path, elpv_subset: Path, prefect_env) -> None:
    """An existing cluster (``--dask-address``): one worker is SIGKILLed while it trains a cell; Dask
    reruns that cell on a live worker, and every cell ends with exactly one result."""
    from distributed import Client, LocalCluster

    params = study_params(tmp_path, elpv_subset, fractions=[1.0], overrides={"train.epochs": 2})
    cells = tmp_path / "study" / "cells"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        study = subprocess.Popen(
            [*TRANSFERKIT, "study", "-p", str(params), "--dask-address", cluster.scheduler_address],
            cwd=REPO,
            env=prefect_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 240
        while not any(cells.glob("*/train")) and study.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # a cell has begun training (dvclive opened its folder)
        busy = [worker for worker, keys in client.processing().items() if keys]
        assert busy, "no worker was running a cell"
        victim = client.run(os.getpid, workers=[busy[0]])[busy[0]]
        os.kill(victim, signal.SIGKILL)
        output, _ = study.communicate(timeout=400)
        assert study.returncode == 0, output
        assert victim not in client.run(os.getpid).values()  # the nanny replaced the dead worker
    records = stored(tmp_path)
    assert sorted(records) == ["2class-finetune-f1-s0", "2class-linear-f1-s0"]
    assert not list(cells.glob("*/error.json"))
    assert all(record["training"]["epochs_run"] == 2 for record in records.values())
