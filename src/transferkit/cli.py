"""The ``transferkit`` command: pipeline stages, data set-up and offline prediction."""

from __future__ import annotations

import csv
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from transferkit.errors import TransferkitError
from transferkit.reporting import console, report_error

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
        from transferkit.stages.common import run_stage

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


@data_app.command("example")
def data_example(
    name: str = typer.Argument(..., help="digits | digits-any-orientation | photo-orientation"),
    dest: Path = typer.Option(..., help="new folder for the ImageFolder tree (<dest>/<class>/<n>.png)"),
    per_class: int | None = typer.Option(None, min=1, help="at most this many images per class"),
    seed: int = typer.Option(0, help="seed for random crops and orientations"),
) -> None:
    """Write a small ImageFolder dataset made from images that installed packages ship (offline).

    Then `dvc add` it and set data.source: imagefolder, data.path: DEST, as with your own images.
    """
    from transferkit.data.examples import write_example

    try:
        counts = write_example(name, dest, per_class, seed)
    except TransferkitError as error:
        raise _fail(error) from None
    console.print(f"{dest}: {sum(counts.values())} images in {len(counts)} classes {counts}")


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


def _parse_sets(sets: list[str]) -> dict[str, Any]:
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


def report_command(params: Path, sets: list[str]) -> str:
    """The exact command that rebuilds a study report: the same params file and overrides, training nothing."""
    return exact_command("transferkit study --report-only", params, [f"-S {shlex.quote(item)}" for item in sets])


DaskAddressOption = typer.Option(
    None, help="run on this existing Dask cluster (tcp://HOST:8786) instead of a local one", metavar="ADDRESS"
)


@app.command()
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

    try:
        resolved = load_params(params, _parse_sets(sets))
        check_report_folder(resolved)
        outcome = None if report_only else run_study(resolved, jobs, dask_address)
        report = write_report(resolved, report_command(params, sets))
    except TransferkitError as error:
        raise _fail(error) from None
    console.print(f"report: {resolved.study.report}/README.md ({len(report['cells'])} cells)")
    if outcome is not None and outcome.failed:
        console.print(
            f"[bold red]error:[/] {len(outcome.failed)} cell(s) failed ({', '.join(outcome.failed)}); "
            "the others are kept, rerun to retry the failed ones",
            highlight=False,
        )
        raise typer.Exit(1)


@app.command()
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
    try:
        rows = write_recipes(load_params(params), store, ensembles, out, command)
    except TransferkitError as error:
        raise _fail(error) from None
    console.print(f"recipes: {out}/README.md ({len(rows)} recipes)")


@app.command()
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

    try:
        resolved = load_params(params, _parse_sets(sets))
        if not report_only:
            run_tune(resolved, jobs, dask_address)
        summary = write_report(resolved)
    except TransferkitError as error:
        raise _fail(error) from None
    console.print(f"trials: {summary['trials']}; report: {resolved.tune.root}/README.md", highlight=False)
    if "command" not in summary:
        console.print("[bold red]error:[/] no trial completed; see the report's table for why")
        raise typer.Exit(1)
    console.print(
        f"best: trial {summary['best_trial']}, {summary['metric']} {summary['best_score']:.4f}, "
        f"params in {resolved.tune.root}/best_params.yaml. Run the pipeline with them:\n  {summary['command']}",
        highlight=False,
    )


@app.command()
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
    """Export models sharing a frozen trunk as one ONNX graph (trunk once, tops averaged) and measure it on test."""
    from transferkit.config import load_params
    from transferkit.export.ensemble import run_ensemble
    from transferkit.io import write_json

    try:
        resolved = load_params(params, _parse_sets(sets))
        report = run_ensemble(
            models,
            Path(resolved.paths.prepared),
            out,
            tta,
            resolved.export.parity_tolerance,
            resolved.evaluate.calibration_bins,
        )
    except TransferkitError as error:
        raise _fail(error) from None
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


@app.command("export-triton")
def export_triton(
    model: Path | None = typer.Argument(None, help="an exported .onnx (default: the registry's production version)"),
    registry: str | None = typer.Option(None, help="take the model from this registry name instead of a file"),
    registry_root: Path = RegistryRoot,
    version: int | None = typer.Option(None, help="registry version [production]"),
    repository: Path = typer.Option(Path("triton-models"), "--repository", help="Triton model repository folder"),
    model_name: str | None = typer.Option(None, help="Triton model name [registry name, or the file's stem]"),
    triton_version: int | None = typer.Option(None, help="version folder [the registry version, or 1]"),
    max_batch_size: int = typer.Option(32, min=1),
    preferred_batch_size: list[int] = typer.Option([8, 16, 32], help="dynamic batching's preferred sizes"),
    max_queue_delay_us: int = typer.Option(2000, min=0, help="dynamic batching's queue delay"),
    instance_kind: str = typer.Option("gpu", help="gpu | cpu: where Triton runs the model instances"),
    storage_uri: str | None = typer.Option(None, help="KServe storageUri of the repository [pvc://models/REPO]"),
) -> None:
    """Write a Triton model repository (config.pbtxt + model.onnx) and a KServe InferenceService for a model."""
    from transferkit.export.triton import TritonOptions
    from transferkit.export.triton import export_triton as write_repository

    if instance_kind not in ("gpu", "cpu"):
        raise typer.BadParameter("use gpu or cpu", param_hint="--instance-kind")
    if (model is None) == (registry is None):
        raise typer.BadParameter("give a MODEL file or --registry NAME (not both)", param_hint="MODEL")
    source_version = 1
    if registry is not None:
        store = _registry(registry_root, registry)
        source_version = version or _registry_call(store.production) or 0
        if not source_version:
            raise _fail(TransferkitError(f"{registry} has no production version; give --version N"))
        model = _registry_call(lambda: store.model_path(source_version))
    model_file = Path(str(model))
    options = TritonOptions(max_batch_size, tuple(preferred_batch_size), max_queue_delay_us, instance_kind)
    try:
        written = write_repository(
            model_file,
            repository,
            model_name or registry or model_file.stem,
            triton_version or source_version,
            storage_uri or f"pvc://models/{repository.name}",
            options,
        )
    except TransferkitError as error:
        raise _fail(error) from None
    for role, path in written.items():
        console.print(f"{role}: {path}")


Row = list[str]


def _row(
    file: Path, class_names: list[str], label: str = "", probabilities: dict[str, float] | None = None, error: str = ""
) -> Row:
    """One CSV row [file, label, p_<class>..., error]; an unreadable file has only its error."""
    values = [f"{probabilities[name]:.6f}" for name in class_names] if probabilities else [""] * len(class_names)
    return [str(file), label, *values, error]


def _local_rows(model: Path, files: list[Path], device: str, batch_size: int) -> tuple[list[str], list[Row]]:
    """Rows [file, label, p_..., error] from a local ONNX model, in ``files`` order."""
    import numpy as np

    from transferkit.errors import DataError
    from transferkit.serving.onnx_model import OnnxClassifier

    classifier = OnnxClassifier(model, device)
    names = classifier.class_names
    rows: list[Row] = []
    for start in range(0, len(files), batch_size):
        chunk, images, readable = files[start : start + batch_size], [], []
        for file in chunk:
            try:
                images.append(classifier.preprocess(file))
                readable.append(file)
            except DataError as error:
                rows.append(_row(file, names, error=str(error)))
        predictions = classifier.predict(np.stack(images)) if images else []
        for file, result in zip(readable, predictions, strict=True):
            rows.append(_row(file, names, result.label, result.probabilities))
    order = {str(file): i for i, file in enumerate(files)}
    return names, sorted(rows, key=lambda row: order[row[0]])


def _remote_rows(url: str, files: list[Path], batch_size: int) -> tuple[list[str], list[Row]]:
    """The same rows from a running ``transferkit serve`` (its batch endpoint, ``batch_size`` files a call)."""
    from transferkit.serving.client import ServingClient

    with ServingClient(url) as client:
        class_names: list[str] = client.model()["classes"]
        rows: list[Row] = []
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            for file, entry in zip(chunk, client.predict_batch(chunk), strict=True):
                rows.append(_row(file, class_names, entry["label"] or "", entry["probabilities"], entry["error"] or ""))
    return class_names, rows


@app.command()
def predict(
    targets: list[Path] = typer.Argument(
        ..., help="MODEL PATH...: an exported .onnx, then image files and/or folders; with --url only PATH..."
    ),
    url: str | None = typer.Option(None, help="classify through a running `transferkit serve` at this URL"),
    output: Path | None = typer.Option(None, "--output", "-o", help="CSV file (default: standard output)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda (local model only)"),
    batch_size: int = typer.Option(32, min=1),
) -> None:
    """Classify images with an exported model (only ONNX Runtime and its metadata), or through a server."""
    from transferkit.io import atomic_write

    if url is None and len(targets) < 2:
        raise typer.BadParameter("give MODEL and at least one PATH (or --url URL and PATHs)", param_hint="TARGETS")
    files = _expand(targets if url else targets[1:])
    try:
        if url:
            class_names, rows = _remote_rows(url, files, batch_size)
        else:
            class_names, rows = _local_rows(targets[0], files, device, batch_size)
    except TransferkitError as error:
        raise _fail(error) from None
    header = ["file", "label", *(f"p_{name}" for name in class_names), "error"]
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


@app.command()
def serve(
    model: str = typer.Option(
        None, "--model", "-m", help="exported .onnx path, or registry:NAME for its production version"
    ),
    device: str | None = typer.Option(None, help="auto | cpu | cuda (cuda never falls back to the CPU)"),
    host: str | None = typer.Option(None, help="bind address [127.0.0.1]"),
    port: int | None = typer.Option(None, help="port [8000]"),
    workers: int | None = typer.Option(None, help="worker processes, one ONNX Runtime session each [1]"),
    max_batch_size: int | None = typer.Option(None, help="images per ONNX Runtime call; 1 disables batching [8]"),
    max_delay_ms: float | None = typer.Option(None, help="ms a batch may wait to fill; 0 = take what is queued [0]"),
    registry_root: Path | None = typer.Option(None, help="registry folder for registry:NAME [models/registry]"),
    model_name: str | None = typer.Option(None, help="name under /v2/models [registry name or file stem]"),
    tensorrt: bool | None = typer.Option(None, "--tensorrt/--no-tensorrt", help="TensorRT before CUDA [off]"),
    variant: str | None = typer.Option(None, help="with registry:NAME, a precision variant such as int8 [main model]"),
    reload_interval_s: float | None = typer.Option(None, help="poll for a new production model; 0 = never [5]"),
) -> None:
    """Serve a model over HTTP: /v1/predict, KServe v2 (/v2), /metrics, /docs; every flag also reads
    TRANSFERKIT_SERVE_<FLAG> from the environment, and TRANSFERKIT_ADMIN_TOKEN enables /admin/reload."""
    import os

    import uvicorn

    from transferkit.serving.app import create_app
    from transferkit.serving.model_source import load_model, source_from
    from transferkit.serving.settings import load_settings

    try:
        settings = load_settings(
            model=model,
            device=device,
            host=host,
            port=port,
            workers=workers,
            max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms,
            registry_root=registry_root,
            model_name=model_name,
            tensorrt=tensorrt,
            variant=variant,
            reload_interval_s=reload_interval_s,
        )
        # Loaded before binding the port, so a bad model or device fails here with a clear message.
        loaded = load_model(source_from(settings), settings)
    except TransferkitError as error:
        raise _fail(error) from None
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "timeout_graceful_shutdown": settings.graceful_timeout_s,
        "log_level": "info",
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings, loaded), **options)
    else:
        os.environ.update(settings.to_env())
        uvicorn.run("transferkit.serving.app:app_from_env", factory=True, workers=settings.workers, **options)


if __name__ == "__main__":
    app()
