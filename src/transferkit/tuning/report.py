"""What a search leaves behind: the best params as a file `dvc exp run` applies, plots, all trials.

Written from the journal alone, so any driver (or `transferkit tune --report-only`) can rebuild it.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
import yaml
from optuna.trial import TrialState

from transferkit.config import Params, set_dotted
from transferkit.io import atomic_write, write_text
from transferkit.tuning.search import open_study

BEST_PARAMS, HISTORY_PNG, IMPORTANCE_PNG, TRIALS_CSV = (
    "best_params.yaml",
    "optimization_history.png",
    "param_importances.png",
    "trials.csv",
)


def exp_run_command(values: dict[str, Any]) -> str:
    """The `dvc exp run` that runs the pipeline with ``values`` (dotted keys; DVC reads each as YAML)."""
    sets = (f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in values.items())
    return " ".join(["dvc exp run", *(f"-S {shlex.quote(item)}" for item in sets)])


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for trial in study.trials:
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else None
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "score": None if trial.value is None else round(trial.value, 4),
                "epochs": len(trial.intermediate_values),
                "seconds": None if seconds is None else round(seconds, 1),
                **trial.params,
                "error": trial.user_attrs.get("error", "its worker was lost" if trial.state == TrialState.FAIL else ""),
            }
        )
    return rows


def _save_axes(axes: Any, path: Path) -> None:
    figure = axes.figure if hasattr(axes, "figure") else axes[0].figure
    figure.set_size_inches(8, 5)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


def write_plots(study: optuna.Study, root: Path) -> list[str]:
    """Optimisation history and (with two completed trials or more) parameter importances; returns notes."""
    completed = [t for t in study.trials if t.state == TrialState.COMPLETE]
    notes = []
    if completed:
        _save_axes(optuna.visualization.matplotlib.plot_optimization_history(study), root / HISTORY_PNG)
    if len(completed) >= 2 and len({tuple(sorted(t.params.items())) for t in completed}) >= 2:
        _save_axes(optuna.visualization.matplotlib.plot_param_importances(study), root / IMPORTANCE_PNG)
    else:
        notes.append("parameter importances need two completed trials with different params")
    return notes


def write_report(params: Params) -> dict[str, Any]:
    """best_params.yaml, the plots, trials.csv and README.md in ``tune.root``; returns the summary."""
    root = Path(params.tune.root)
    study = open_study(params.tune, root)
    rows = trial_rows(study)
    counts = {
        state.name: sum(r["state"] == state.name for r in rows) for state in TrialState if state != TrialState.WAITING
    }
    metric = params.train.selection_metric
    summary: dict[str, Any] = {"trials": counts, "metric": f"val_{metric}" + (" (negated)" if metric == "loss" else "")}
    lines = [
        f"# Tuning: study `{params.tune.study_name}`",
        "",
        f"Trials: {counts}. Score: validation {summary['metric']}.",
        "",
    ]
    if counts["COMPLETE"]:
        best = study.best_trial
        nested: dict[str, Any] = {}
        for key, value in best.params.items():
            set_dotted(nested, key, value)
        with atomic_write(root / BEST_PARAMS, "w") as handle:
            yaml.safe_dump(nested, handle, sort_keys=False)
        summary.update(best_trial=best.number, best_score=best.value, best_params=best.params)
        summary["command"] = exp_run_command(best.params)
        lines += [
            f"Best: trial {best.number}, score {best.value:.4f}: `{BEST_PARAMS}`. Run the pipeline with it:",
            "",
            f"    {summary['command']}",
            "",
        ]
    notes = write_plots(study, root)
    lines += [
        f"![optimisation history]({HISTORY_PNG})",
        *(notes or [f"![parameter importances]({IMPORTANCE_PNG})"]),
        "",
    ]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(root / TRIALS_CSV, buffer.getvalue())
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("" if row.get(c) is None else str(row.get(c)) for c in columns) + " |" for row in rows]
    write_text(root / "README.md", "\n".join(lines) + "\n")
    return summary
