"""Research commands: the strategy study, the recipe table, the tuning search and ensembles."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from transferkit.cli.common import DaskAddressOption, ParamsOption, exact_command, parse_sets, reports_errors
from transferkit.reporting import console


def report_command(params: Path, sets: list[str]) -> str:
    """The exact command that rebuilds a study report: the same params file and overrides, training nothing."""
    return exact_command("transferkit study --report-only", params, [f"-S {shlex.quote(item)}" for item in sets])


@reports_errors
def study(
    params: Path = ParamsOption,
    sets: list[str] = typer.Option([], "--set", "-S", help="dotted override KEY=VALUE, e.g. -S study.seeds=[0]"),
    jobs: int | None = typer.Option(None, min=1, help="cells in parallel: local Dask workers [study.jobs]"),
    dask_address: str | None = DaskAddressOption,
    report_only: bool = typer.Option(False, help="rebuild the report from finished cells, train nothing"),
) -> None:
    """Run the strategy x data-fraction x seed grid (params `study:`) and write its report."""
    from transferkit.config import load_params
    from transferkit.study.report import check_report_folder, write_report
    from transferkit.study.runner import run_study

    resolved = load_params(params, parse_sets(sets))
    check_report_folder(resolved)
    outcome = None if report_only else run_study(resolved, jobs, dask_address)
    report = write_report(resolved, report_command(params, sets))
    console.print(f"report: {resolved.study.report}/README.md ({len(report['cells'])} cells)")
    if outcome is not None and outcome.failed:
        console.print(
            f"[bold red]error:[/] {len(outcome.failed)} cell(s) failed ({', '.join(outcome.failed)}); "
            "the others are kept, rerun to retry the failed ones",
            highlight=False,
        )
        raise typer.Exit(1)


@reports_errors
def recipes(
    params: Path = ParamsOption,
    store: Path = typer.Option(Path("docs/recipes/cells"), help="results store of the recipe tries"),
    ensembles: Path = typer.Option(
        Path("docs/recipes/ensembles"), help="ensembles kept by `transferkit ensemble --record`"
    ),
    out: Path = typer.Option(Path("docs/recipes"), help="folder of the table (README.md, results.json)"),
) -> None:
    """Table of every recipe tried (study cells run with `study.overrides` into STORE, and recorded
    ensembles), from the records alone."""
    from transferkit.config import load_params
    from transferkit.study.recipes import write_recipes

    options = [f"--{name} {shlex.quote(str(value))}" for name, value in (("store", store), ("ensembles", ensembles))]
    command = exact_command("transferkit recipes", params, [*options, f"--out {shlex.quote(str(out))}"])
    rows = write_recipes(load_params(params), store, ensembles, out, command)
    console.print(f"recipes: {out}/README.md ({len(rows)} recipes)")


@reports_errors
def tune(
    params: Path = ParamsOption,
    sets: list[str] = typer.Option([], "--set", "-S", help="dotted override KEY=VALUE, e.g. -S tune.trials=40"),
    jobs: int | None = typer.Option(None, min=1, help="trials in parallel: local Dask workers [tune.jobs]"),
    dask_address: str | None = DaskAddressOption,
    report_only: bool = typer.Option(False, help="rebuild the report from the journal, run no trial"),
) -> None:
    """Search params (`tune:` in params.yaml) with Optuna on the prepared data; write the best as a params file."""
    from transferkit.config import load_params
    from transferkit.tuning.report import write_report
    from transferkit.tuning.search import run_tune

    resolved = load_params(params, parse_sets(sets))
    if not report_only:
        run_tune(resolved, jobs, dask_address)
    summary = write_report(resolved)
    console.print(f"trials: {summary['trials']}; report: {resolved.tune.root}/README.md", highlight=False)
    if "command" not in summary:
        console.print("[bold red]error:[/] no trial completed; see the report's table for why")
        raise typer.Exit(1)
    console.print(
        f"best: trial {summary['best_trial']}, {summary['metric']} {summary['best_score']:.4f}, "
        f"params in {resolved.tune.root}/best_params.yaml. Run the pipeline with them:\n  {summary['command']}",
        highlight=False,
    )


@reports_errors
def ensemble(
    models: list[Path] = typer.Argument(..., help="trained checkpoints (model.pt) that share their frozen units"),
    params: Path = ParamsOption,
    sets: list[str] = typer.Option(
        [], "--set", "-S", help="dotted override KEY=VALUE, e.g. -S paths.prepared=studies/default/prepared/ID/data"
    ),
    out: Path = typer.Option(Path("models/ensemble"), help="folder for model.onnx and ensemble.json"),
    tta: bool = typer.Option(False, help="also average over the augmentation preset's views (flips, quarter turns)"),
    record: Path | None = typer.Option(
        None, help="also keep the report as a recipe try, named after --out, in this folder (docs/recipes/ensembles)"
    ),
) -> None:
    """Export models sharing a frozen trunk as one ONNX graph (trunk once, tops averaged) and measure it on test.

    Each member's training time comes from its study record in `study.store` (checkpoints carry
    no wall-clock time).
    """
    from transferkit.config import load_params
    from transferkit.io import write_json
    from transferkit.study.ensemble import run_ensemble

    resolved = load_params(params, parse_sets(sets))
    report = run_ensemble(
        models,
        Path(resolved.paths.prepared),
        out,
        tta,
        resolved.export.parity_tolerance,
        resolved.evaluate.calibration_bins,
        Path(resolved.study.store),
    )
    if record:  # without the members' paths, which are this machine's; their params identify them
        write_json(record / f"{out.name}.json", {k: v for k, v in report.items() if k != "members"})
    labelled = [*zip(map(str, models), report["members_alone"], strict=True)]
    labelled.append(("ensemble" + (" + TTA" if tta else ""), report["ensemble"]))
    for label, figures in labelled:
        low, high = figures["accuracy_ci"]["low"], figures["accuracy_ci"]["high"]
        console.print(
            f"{label}: test accuracy {figures['accuracy']:.4f} [{low:.3f}, {high:.3f}], "
            f"macro-F1 {figures['macro_f1']:.4f}",
            highlight=False,
        )
    cost = report["ms_per_image_batch8"]
    console.print(
        f"{out}/model.onnx: {cost['ensemble']} ms/image vs {cost['one_member']} for one member "
        f"(shared cut {report['shared_cut']}, {len(report['tta_views'])} view(s))",
        highlight=False,
    )
