"""Commands that use an exported model: serve it over HTTP, predict or explain files, write a Triton repository."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from transferkit.cli.common import RegistryRoot, reports_errors
from transferkit.errors import TransferkitError
from transferkit.reporting import console


@reports_errors
def predict(
    targets: list[Path] = typer.Argument(
        ..., help="MODEL PATH...: an exported .onnx, then image files and/or folders; with --url only PATH..."
    ),
    url: str | None = typer.Option(None, help="classify through a running `transferkit serve` at this URL"),
    output: Path | None = typer.Option(None, "--output", "-o", help="CSV file (default: standard output)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda (local model only)"),
    batch_size: int = typer.Option(32, min=1),
) -> None:
    """Classify images with an exported model (only ONNX Runtime and its metadata), or through a server:
    CSV columns file, label, p_<class>..., then decision (a model with a decision rule only) and error."""
    from transferkit.io import atomic_write
    from transferkit.serving.batch_predict import expand_images, local_rows, remote_rows, write_rows

    if url is None and len(targets) < 2:
        raise typer.BadParameter("give MODEL and at least one PATH (or --url URL and PATHs)", param_hint="TARGETS")
    files = expand_images(targets if url else targets[1:])
    table = remote_rows(url, files, batch_size) if url else local_rows(targets[0], files, device, batch_size)
    if output is None:
        write_rows(sys.stdout, table)
    else:
        with atomic_write(output, "w") as handle:
            write_rows(handle, table)
        console.print(f"{len(table.rows)} predictions -> {output}")
    failed = sum(1 for row in table.rows if row[-1])
    if failed:
        console.print(f"[yellow]{failed} file(s) could not be read; see the error column[/]")


@reports_errors
def explain(
    images: list[Path] = typer.Argument(..., help="image files and/or folders of images"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the overlay PNGs (same relative names, .png)"),
    model: Path = typer.Option(Path("models/export/model.onnx"), "--model", "-m", help="an exported .onnx"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    batch_size: int = typer.Option(32, min=1),
) -> None:
    """Draw where the model saw its evidence: one overlay PNG per image, at the image's own size
    (for the decision rule's positive classes, else the predicted class). An unreadable image is
    skipped with its reason and the command exits 1 after the others are drawn."""
    from transferkit.serving.batch_predict import expand_images
    from transferkit.serving.explanation import explain_files

    skipped = drawn = 0
    for result in explain_files(model, expand_images(images), out, device, batch_size):
        if result.error is None:
            drawn += 1
        else:
            skipped += 1
        console.print(result.describe(), style="yellow" if result.error else None, highlight=False, markup=False)
    console.print(f"{drawn} overlay(s) in {out}" + (f"; {skipped} image(s) skipped, see above" if skipped else ""))
    if skipped:
        raise typer.Exit(1)


@reports_errors
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
    from transferkit.registry import Registry

    if instance_kind not in ("gpu", "cpu"):
        raise typer.BadParameter("use gpu or cpu", param_hint="--instance-kind")
    if (model is None) == (registry is None):
        raise typer.BadParameter("give a MODEL file or --registry NAME (not both)", param_hint="MODEL")
    source_version = 1
    if registry is not None:
        store = Registry(registry_root, registry)
        source_version = version or store.production() or 0
        if not source_version:
            raise TransferkitError(f"{registry} has no production version; give --version N")
        model = store.model_path(source_version)
    model_file = Path(str(model))
    options = TritonOptions(max_batch_size, tuple(preferred_batch_size), max_queue_delay_us, instance_kind)
    written = write_repository(
        model_file,
        repository,
        model_name or registry or model_file.stem,
        triton_version or source_version,
        storage_uri or f"pvc://models/{repository.name}",
        options,
    )
    for role, path in written.items():
        console.print(f"{role}: {path}")


@reports_errors
def serve(
    model: str = typer.Option(
        None, "--model", "-m", help="exported .onnx path, or registry:NAME for its production version"
    ),
    device: str | None = typer.Option(None, help="auto | cpu | cuda (cuda never falls back to the CPU)"),
    host: str | None = typer.Option(None, help="bind address [127.0.0.1]"),
    port: int | None = typer.Option(None, help="port [8000]"),
    workers: int | None = typer.Option(None, help="worker processes, one ONNX Runtime session each [1]"),
    max_batch_size: int | None = typer.Option(None, help="images per ONNX Runtime call; 1: no batching [0: probe]"),
    max_delay_ms: float | None = typer.Option(None, help="ms a batch may wait to fill; 0 = take what is queued [0]"),
    registry_root: Path | None = typer.Option(None, help="registry folder for registry:NAME [models/registry]"),
    model_name: str | None = typer.Option(None, help="name under /v2/models [registry name or file stem]"),
    tensorrt: bool | None = typer.Option(None, "--tensorrt/--no-tensorrt", help="TensorRT before CUDA [off]"),
    variant: str | None = typer.Option(None, help="with registry:NAME, a precision variant such as int8 [main model]"),
    reload_interval_s: float | None = typer.Option(None, help="poll for a new production model; 0 = never [5]"),
    monitor: bool | None = typer.Option(None, "--monitor/--no-monitor", help="count answers, test drift [on]"),
    monitor_dir: Path | None = typer.Option(
        None, help="folder for predictions.jsonl and review/ [none: counts and drift only]"
    ),
    prediction_log_max_bytes: int | None = typer.Option(None, help="prediction log cap, rotations included [64 MiB]"),
    review_queue_max_images: int | None = typer.Option(None, help="review queue cap in images [1000]"),
    review_queue_max_bytes: int | None = typer.Option(None, help="review queue cap in bytes [512 MiB]"),
    review_drop: Path | None = typer.Option(
        None, help="where the review page's labels land, e.g. data/raw/elpv-reviewed [none: /review is off]"
    ),
    drift_window: int | None = typer.Option(None, help="recent images tested for drift [200]"),
    drift_min_samples: int | None = typer.Option(None, help="images before drift can be detected [100]"),
    drift_alpha: float | None = typer.Option(None, help="drift when the KS test's p-value is below [0.01]"),
    monitor_queue: int | None = typer.Option(None, help="images waiting for the monitor; more are dropped [1024]"),
) -> None:
    """Serve a model over HTTP: /v1/predict, /v1/monitor, KServe v2 (/v2), /metrics, /docs, the review page
    (/review, with --monitor-dir and --review-drop); every flag also reads TRANSFERKIT_SERVE_<FLAG> from the
    environment, and TRANSFERKIT_ADMIN_TOKEN enables /admin/reload and the review page."""
    import os

    import uvicorn

    from transferkit.serving.app import create_app
    from transferkit.serving.model_source import load_model, source_from
    from transferkit.serving.settings import load_settings

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
        monitor=monitor,
        monitor_dir=monitor_dir,
        prediction_log_max_bytes=prediction_log_max_bytes,
        review_queue_max_images=review_queue_max_images,
        review_queue_max_bytes=review_queue_max_bytes,
        review_drop=review_drop,
        drift_window=drift_window,
        drift_min_samples=drift_min_samples,
        drift_alpha=drift_alpha,
        monitor_queue=monitor_queue,
    )
    # Loaded before binding the port, so a bad model or device fails here with a clear message.
    loaded = load_model(source_from(settings), settings)
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
