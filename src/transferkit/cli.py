"""The ``transferkit`` command: pipeline stages, data set-up and offline prediction."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import typer

from transferkit.errors import TransferkitError
from transferkit.stages.common import console, report_error, run_stage

if TYPE_CHECKING:
    from transferkit.registry import Registry

T = TypeVar("T")

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Set up raw data directories.", no_args_is_help=True)
app.add_typer(data_app, name="data")
registry_app = typer.Typer(help="Inspect and move the model registry's production pointer.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")

ParamsOption = typer.Option("params.yaml", "--params", "-p", help="params file")
RegistryName = typer.Option("elpv-defects", "--name", "-n", help="registry (model) name")
RegistryRoot = typer.Option(Path("models/registry"), "--root", help="registry folder")


def _stage(name: str) -> None:
    """Register ``transferkit <name>`` as the same ``run`` that dvc.yaml calls."""
    import importlib

    def command(params: Path = ParamsOption) -> None:
        module = importlib.import_module(f"transferkit.stages.{name}")
        raise typer.Exit(run_stage(module.run, str(params)))

    command.__doc__ = f"Run the {name} stage (what `dvc repro {name}` runs)."
    app.command(name)(command)


for _name in ("prepare", "train", "evaluate", "gate", "export"):
    _stage(_name)


def _fail(error: TransferkitError) -> typer.Exit:
    return typer.Exit(report_error(error))


@app.command("check-params")
def check_params(params: Path = ParamsOption) -> None:
    """Validate a params file and print the resolved values."""
    from transferkit.config import load_params

    try:
        resolved = load_params(params)
    except TransferkitError as error:
        raise _fail(error) from None
    console.print_json(resolved.model_dump_json())


@data_app.command("elpv")
def data_elpv(
    dest: Path = typer.Option(Path("data/raw/elpv"), help="raw-data directory to create"),
    limit: int | None = typer.Option(None, min=8, help="copy a stratified subset of this many images"),
    seed: int = typer.Option(0, help="seed for --limit"),
) -> None:
    """Materialise the embedded ELPV dataset (from the elpv-dataset package) as a raw-data directory."""
    from transferkit.data.elpv import materialize_elpv

    try:
        count = materialize_elpv(dest, limit, seed)
    except TransferkitError as error:
        raise _fail(error) from None
    console.print(f"{dest}: {count} ELPV images")


def _registry(root: Path, name: str) -> Registry:
    from transferkit.registry import Registry

    return _registry_call(lambda: Registry(root, name))


def _registry_call(action: Callable[[], T]) -> T:
    """Run a registry action, turning its errors into a message and an exit code."""
    try:
        return action()
    except TransferkitError as error:
        raise _fail(error) from None


@registry_app.command("list")
def registry_list(name: str = RegistryName, root: Path = RegistryRoot) -> None:
    """Versions with their headline metrics; * marks production."""
    registry = _registry(root, name)
    production, versions = registry.production(), registry.versions()
    for version in versions:
        info = registry.show(version)
        metrics, lineage = info["metrics"], info["lineage"]
        console.print(
            f"{'*' if version == production else ' '} v{version}  accuracy {metrics['accuracy']:.4f}  "
            f"macro-F1 {metrics['macro_f1']:.4f}  {lineage['created_at']}  "
            f"commit {lineage.get('git_commit', '?')[:10]}",
            highlight=False,
        )
    if not versions:
        console.print(f"{name}: no versions yet")


@registry_app.command("show")
def registry_show(version: int, name: str = RegistryName, root: Path = RegistryRoot) -> None:
    """Lineage and metrics of one version."""
    registry = _registry(root, name)
    typer.echo(json.dumps(_registry_call(lambda: registry.show(version)), indent=2))


@registry_app.command("promote")
def registry_promote(version: int, name: str = RegistryName, root: Path = RegistryRoot) -> None:
    """Make VERSION the production model (an atomic pointer change)."""
    registry = _registry(root, name)
    _registry_call(lambda: registry.promote(version))
    console.print(f"{name}: production is now v{version}")


@registry_app.command("rollback")
def registry_rollback(name: str = RegistryName, root: Path = RegistryRoot) -> None:
    """Return production to the version before the current one."""
    registry = _registry(root, name)
    version = _registry_call(registry.rollback)
    console.print(f"{name}: rolled back, production is now v{version}")


def _expand(paths: list[Path]) -> list[Path]:
    from transferkit.data.sources import IMAGE_SUFFIXES

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            files.append(path)
        else:
            raise typer.BadParameter(f"{path} does not exist", param_hint="PATHS")
    return files


@app.command()
def predict(
    model: Path = typer.Argument(..., help="exported .onnx model"),
    paths: list[Path] = typer.Argument(..., help="image files and/or folders (searched recursively)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="CSV file (default: standard output)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    batch_size: int = typer.Option(32, min=1),
) -> None:
    """Classify images with an exported model, using only ONNX Runtime and the model's metadata."""
    from transferkit.errors import DataError
    from transferkit.io import atomic_write
    from transferkit.serving.onnx_model import OnnxClassifier

    try:
        classifier = OnnxClassifier(model, device)
    except TransferkitError as error:
        raise _fail(error) from None
    files = _expand(paths)
    header = ["file", "label", *(f"p_{name}" for name in classifier.class_names), "error"]
    rows: list[list[str]] = []
    for start in range(0, len(files), batch_size):
        batch, good = [], []
        for file in files[start : start + batch_size]:
            try:
                batch.append(classifier.preprocess(file))
                good.append(file)
            except DataError as error:
                rows.append([str(file), "", *([""] * len(classifier.class_names)), str(error)])
        if batch:
            import numpy as np

            for file, result in zip(good, classifier.predict(np.stack(batch)), strict=True):
                rows.append([str(file), result.label, *(f"{p:.6f}" for p in result.probabilities.values()), ""])
    rows.sort(key=lambda row: files.index(Path(row[0])))
    if output is None:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerows([header, *rows])
    else:
        with atomic_write(output, "w") as handle:
            csv.writer(handle, lineterminator="\n").writerows([header, *rows])
        console.print(f"{len(rows)} predictions -> {output}")
    failed = sum(1 for row in rows if row[-1])
    if failed:
        console.print(f"[yellow]{failed} file(s) could not be read; see the error column[/]")


if __name__ == "__main__":
    app()
