"""The study grid on the shrunk config: a real 2 x 2 x 1 mini-grid on a 2-worker Dask LocalCluster,
rerun skipping, failure isolation, and a worker killed mid-cell."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tests.conftest import REPO, run_tool, shrunk_raw

TRANSFERKIT = [sys.executable, "-m", "transferkit.cli"]


def study_params(tmp_path: Path, elpv_subset: Path, **study: object) -> Path:
    raw = shrunk_raw()
    raw["data"]["path"] = str(elpv_subset)
    raw["paths"]["feature_cache"] = str(tmp_path / "feature-cache")
    raw["study"] = {
        "strategies": ["linear", "finetune"],
        "fractions": [0.5, 1.0],
        "seeds": [0],
        "four_class": False,
        "overrides": {"train.epochs": 1},
        "root": str(tmp_path / "study"),
        "report": str(tmp_path / "report"),
        "jobs": 2,
        **study,
    }
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    return file


def test_mini_grid_runs_reports_and_skips_finished_cells(tmp_path: Path, elpv_subset: Path, prefect_env) -> None:
    params = study_params(tmp_path, elpv_subset)
    run = run_tool([*TRANSFERKIT, "study", "-p", str(params)], REPO, env=prefect_env)
    assert "study-grid" in run.stdout + run.stderr  # the cells ran as a Prefect flow
    cells = sorted((tmp_path / "study" / "cells").glob("*/result.json"))
    assert [c.parent.name for c in cells] == [
        "2class-finetune-f0.5-s0",
        "2class-finetune-f1-s0",
        "2class-linear-f0.5-s0",
        "2class-linear-f1-s0",
    ]
    results = [json.loads(c.read_text()) for c in cells]
    assert all(0 <= r["test_accuracy"] <= 1 and r["epochs_run"] == 1 for r in results)
    half, full = (r["train_images"] for r in results[:2])
    assert half < full  # the fraction really shrinks the training set
    report = json.loads((tmp_path / "report" / "results.json").read_text())
    assert len(report["table"]) == 4 and not report["failed"]
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "| 2-class | linear | 0.5 | 1 |" in readme
    assert (tmp_path / "report" / "accuracy_vs_fraction.png").stat().st_size > 10_000

    before = [c.stat().st_mtime_ns for c in cells]
    rerun = run_tool([*TRANSFERKIT, "study", "-p", str(params)], REPO, env=prefect_env)
    assert "4 already done, 0 to run" in rerun.stderr
    assert [c.stat().st_mtime_ns for c in cells] == before

    changed = run_tool(
        [*TRANSFERKIT, "study", "-p", str(params), "-S", "study.overrides={train.epochs: 2}"], REPO, False
    )
    assert changed.returncode == 2 and "different params" in changed.stderr


def test_a_failed_cell_keeps_the_others(tmp_path: Path, elpv_subset: Path, prefect_env) -> None:
    # 1 % of ~100 training images cannot hold both classes: that cell fails, the other one runs.
    params = study_params(tmp_path, elpv_subset, strategies=["linear"], fractions=[0.01, 1.0], jobs=1)
    result = run_tool([*TRANSFERKIT, "study", "-p", str(params)], REPO, check=False, env=prefect_env)
    assert result.returncode == 1 and "1 cell(s) failed (2class-linear-f0.01-s0)" in result.stderr
    cells = tmp_path / "study" / "cells"
    assert (cells / "2class-linear-f1-s0" / "result.json").is_file()
    assert "error" in json.loads((cells / "2class-linear-f0.01-s0" / "error.json").read_text())
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
    results = sorted(path.parent.name for path in cells.glob("*/result.json"))
    assert results == ["2class-finetune-f1-s0", "2class-linear-f1-s0"]
    assert not list(cells.glob("*/error.json"))
    assert all(json.loads((cells / name / "result.json").read_text())["epochs_run"] == 2 for name in results)
