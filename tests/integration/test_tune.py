"""`transferkit tune` on the shrunk config: a real Optuna search on Dask, pruning, the journal, the report."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, run_tool, shrunk_params
from transferkit.config import load_params
from transferkit.stages import prepare

pytestmark = pytest.mark.slow
TRANSFERKIT = [sys.executable, "-m", "transferkit.cli"]


def test_search_prunes_a_hopeless_trial_writes_best_params_and_continues(
    tmp_path: Path, elpv_subset: Path, prefect_env
) -> None:
    params = shrunk_params(tmp_path)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    (tmp_path / "data" / "raw" / "elpv").symlink_to(elpv_subset)
    prepare.run(params)
    raw = params.model_dump(mode="json")
    raw["tune"] = {
        "space": {
            "train.lr": {"low": 1e-7, "high": 1e-2, "log": True},
            "train.label_smoothing": {"choices": [0.0, 0.1]},
        },
        # trial 0 learns, trial 1 cannot (lr 1e-7): the median pruner stops it early
        "enqueue": [{"train.lr": 1e-3, "train.label_smoothing": 0.1}, {"train.lr": 1e-7, "train.label_smoothing": 0.1}],
        "trials": 3,
        "startup_trials": 1,
        "prune_after_epochs": 0,
        "overrides": {"train.strategy": "linear", "train.epochs": 3, "train.selection_metric": "loss"},
        "root": str(tmp_path / "tune"),
    }
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(raw, sort_keys=False))

    run = run_tool([*TRANSFERKIT, "tune", "-p", str(file)], REPO, env=prefect_env)
    assert "tune-trials" in run.stderr + run.stdout  # the trials ran as a Prefect flow
    rows = list(csv.DictReader((tmp_path / "tune" / "trials.csv").open()))
    assert [row["trial"] for row in rows] == ["0", "1", "2"]
    assert rows[1]["state"] == "PRUNED" and int(rows[1]["epochs"]) < 3  # stopped before its last epoch
    assert rows[0]["state"] == "COMPLETE" and rows[0]["epochs"] == "3"
    best = yaml.safe_load((tmp_path / "tune" / "best_params.yaml").read_text())
    completed = {float(r["score"]): r for r in rows if r["state"] == "COMPLETE"}
    assert best["train"]["lr"] == pytest.approx(float(completed[max(completed)]["train.lr"]))
    assert f"dvc exp run -S train.lr={best['train']['lr']}" in " ".join((run.stdout + run.stderr).split())
    overrides = {f"train.{key}": value for key, value in best["train"].items()}
    assert load_params(file, overrides).train.lr == best["train"]["lr"]  # the file applies as params
    assert (tmp_path / "tune" / "optimization_history.png").stat().st_size > 5_000

    more = run_tool([*TRANSFERKIT, "tune", "-p", str(file), "-S", "tune.trials=4"], REPO, env=prefect_env)
    assert "3 trials finished, 1 to run" in more.stdout + more.stderr  # the journal carries the study on
    assert len(list(csv.DictReader((tmp_path / "tune" / "trials.csv").open()))) == 4
