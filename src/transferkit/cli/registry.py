"""``transferkit registry``: list versions, show one, move the production pointer."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli.common import RegistryName, RegistryRoot, reports_errors
from transferkit.registry import Registry
from transferkit.reporting import console

registry_app = typer.Typer(help="Inspect and move the model registry's production pointer.", no_args_is_help=True)


def _open(root: Path, name: str) -> Registry:
    return Registry(root, name)


@registry_app.command("list")
@reports_errors
def registry_list(name: str = RegistryName, root: Path = RegistryRoot) -> None:
    """Versions with their headline metrics; * marks production."""
    registry = _open(root, name)
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
@reports_errors
def registry_show(version: int, name: str = RegistryName, root: Path = RegistryRoot) -> None:
    """Lineage and metrics of one version."""
    typer.echo(json.dumps(_open(root, name).show(version), indent=2))


@registry_app.command("promote")
@reports_errors
def registry_promote(version: int, name: str = RegistryName, root: Path = RegistryRoot) -> None:
    """Make VERSION the production model (an atomic pointer change)."""
    _open(root, name).promote(version)
    console.print(f"{name}: production is now v{version}")


@registry_app.command("rollback")
@reports_errors
def registry_rollback(name: str = RegistryName, root: Path = RegistryRoot) -> None:
    """Return production to the version before the current one."""
    version = _open(root, name).rollback()
    console.print(f"{name}: rolled back, production is now v{version}")
