"""What every command group shares: the one error wrapper, common options and override parsing."""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer

from transferkit.errors import TransferkitError
from transferkit.reporting import report_error

P = ParamSpec("P")
R = TypeVar("R")

ParamsOption = typer.Option("params.yaml", "--params", "-p", help="params file")
RegistryName = typer.Option("elpv-defects", "--name", "-n", help="registry (model) name")
RegistryRoot = typer.Option(Path("models/registry"), "--root", help="registry folder")
DaskAddressOption = typer.Option(
    None, help="run on this existing Dask cluster (tcp://HOST:8786) instead of a local one", metavar="ADDRESS"
)


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """``command`` with a user-facing error (``TransferkitError``) turned into its message and exit
    code 2, the one place the CLI does so; anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except TransferkitError as error:
            raise typer.Exit(report_error(error)) from None

    return run


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """``key=value`` pairs with YAML values, as ``dvc exp run -S`` takes them."""
    import yaml

    overrides = {}
    for item in sets:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        overrides[key] = yaml.safe_load(value)
    return overrides


def exact_command(head: str, params: Path, options: list[str]) -> str:
    """``head`` with the same params file and ``options`` (already quoted): what a report prints to be rebuilt."""
    file = [] if params == Path("params.yaml") else [f"-p {shlex.quote(str(params))}"]
    return " ".join([head, *file, *options])
