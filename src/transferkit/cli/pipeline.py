"""The pipeline's commands: each stage as ``dvc repro`` runs it, params checking, and raw data set-up."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import typer

from transferkit.cli.common import ParamsOption, reports_errors
from transferkit.reporting import console

data_app = typer.Typer(help="Set up raw data directories.", no_args_is_help=True)


def _stage_command(name: str) -> Callable[[Path], None]:
    """``transferkit <name>``: the same ``run(params)`` that dvc.yaml calls (imported when run, so
    ``--help`` does not load torch)."""

    def command(params: Path = ParamsOption) -> None:
        from transferkit.stages.common import run_stage

        module = importlib.import_module(f"transferkit.stages.{name}")
        raise typer.Exit(run_stage(module.run, str(params)))

    command.__doc__ = f"Run the {name} stage (what `dvc repro {name}` runs)."
    return command


prepare = _stage_command("prepare")
train = _stage_command("train")
evaluate = _stage_command("evaluate")
gate = _stage_command("gate")
export = _stage_command("export")


@reports_errors
def check_params(params: Path = ParamsOption) -> None:
    """Validate a params file and print the resolved values."""
    from transferkit.config import load_params

    console.print_json(load_params(params).model_dump_json())


@data_app.command("elpv")
@reports_errors
def data_elpv(
    dest: Path = typer.Option(Path("data/raw/elpv"), help="raw-data directory to create"),
    limit: int | None = typer.Option(None, min=8, help="copy a stratified subset of this many images"),
    seed: int = typer.Option(0, help="seed for --limit"),
) -> None:
    """Materialise the embedded ELPV dataset (from the elpv-dataset package) as a raw-data directory."""
    from transferkit.data.elpv import materialize_elpv

    count = materialize_elpv(dest, limit, seed)
    console.print(f"{dest}: {count} ELPV images")


@data_app.command("example")
@reports_errors
def data_example(
    name: str = typer.Argument(..., help="digits | digits-any-orientation | photo-orientation | mirror-letters"),
    dest: Path = typer.Option(..., help="new folder for the ImageFolder tree (<dest>/<class>/<n>.png)"),
    per_class: int | None = typer.Option(None, min=1, help="at most this many images per class"),
    seed: int = typer.Option(0, help="seed for random crops, orientations and fonts"),
) -> None:
    """Write a small ImageFolder dataset made from images that installed packages ship (offline).

    Then `dvc add` it and set data.source: imagefolder, data.path: DEST, as with your own images.
    """
    from transferkit.data.examples import write_example

    counts = write_example(name, dest, per_class, seed)
    console.print(f"{dest}: {sum(counts.values())} images in {len(counts)} classes {counts}")
