"""``transferkit review``: suspected label errors into the review queue; Label Studio out and back."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from transferkit.cli.common import ParamsOption, reports_errors
from transferkit.reporting import console

review_app = typer.Typer(
    help="People in the loop: suspected label errors for review, and Label Studio export and import.",
    no_args_is_help=True,
)
QueueOption = typer.Option(..., "--queue", "-q", help="the server's review folder: <monitor_dir>/review")


@review_app.command("suspects")
@reports_errors
def suspects(
    queue: Path = QueueOption,
    top: int = typer.Option(30, min=1, help="queue the N most likely mislabelled images"),
    features: str = typer.Option(
        "imagenet", help="imagenet (pretrained backbone, never saw a label) | trained (the fine-tuned checkpoint)"
    ),
    split: str = typer.Option("train", help="the prepared split to check"),
    folds: int = typer.Option(5, min=2, help="cross-validation folds of the probe"),
    params: Path = ParamsOption,
) -> None:
    """Rank the split's images by how likely their label is wrong (cleanlab on out-of-fold
    probabilities of a probe on the network's embeddings) and queue the top N for review, with
    reason "label suspected", the given label and the probabilities."""
    from transferkit.config import load_params
    from transferkit.data.cache import PreparedData
    from transferkit.evaluation.label_issues import embedding_model, find_issues, split_embeddings
    from transferkit.serving.monitor_files import ReviewQueue
    from transferkit.serving.settings import ServeSettings
    from transferkit.serving.suspects import queue_suspects
    from transferkit.stages.common import configure_threads
    from transferkit.training.checkpoint import MODEL
    from transferkit.training.compute import Compute

    settings = load_params(params)
    configure_threads(settings.train.num_threads)
    prepared = PreparedData.load(settings.paths.prepared)
    model, version = embedding_model(
        features,
        Path(settings.paths.train) / MODEL,
        settings.model.architecture,
        len(prepared.class_names),
    )
    compute = Compute.from_params(settings.train)
    indices, embeddings = split_embeddings(prepared, model, split, compute, settings.evaluate.batch_size)
    issues = find_issues(indices, prepared.labels(indices), embeddings, features, version, folds, settings.data.seed)
    caps = ServeSettings.model_fields
    review = ReviewQueue(
        queue,
        caps["review_queue_max_images"].default,
        caps["review_queue_max_bytes"].default,
        caps["monitor_min_free_bytes"].default,
    )
    queued = queue_suspects(review, issues, prepared, Path(settings.data.path), top)
    console.print(
        f"{len(issues.ranked)} suspected label error(s) among {len(issues.indices)} {split} images "
        f"(probe on {features} embeddings, out-of-fold accuracy {issues.probe_accuracy:.3f}); "
        f"queued {len(queued.added)} in {queue}" + (f", {queued.already} already there" if queued.already else "")
    )


@review_app.command("export")
@reports_errors
def export(
    queue: Path = typer.Argument(..., help="the server's review folder: <monitor_dir>/review"),
    output: Path = typer.Option(..., "--output", "-o", help="Label Studio tasks JSON to write"),
    config: Path | None = typer.Option(
        None, "--config", help="labeling config XML to write [beside --output, <stem>.xml]"
    ),
) -> None:
    """Write the queued images as Label Studio tasks (image inline, the model's answer as a
    pre-annotation) and the labeling config to create the project with."""
    from transferkit.io import write_text
    from transferkit.label_studio import export_tasks, labeling_config

    tasks, classes = export_tasks(queue)
    config = config or output.with_suffix(".xml")
    write_text(output, json.dumps(tasks))
    write_text(config, labeling_config(classes) + "\n")
    console.print(f"{len(tasks)} task(s) -> {output}; labeling config ({', '.join(classes)}) -> {config}")


@review_app.command("import")
@reports_errors
def import_(
    export_file: Path = typer.Argument(..., help="a Label Studio project export, JSON format"),
    drop: Path = typer.Option(..., "--drop", help="the data drop folder, e.g. data/raw/elpv-reviewed"),
    classes: list[str] = typer.Option(..., "--classes", "-c", help="the model's classes, in order (repeat)"),
) -> None:
    """Read a Label Studio JSON export into the data drop: one label per task, source "label studio"."""
    from transferkit.label_studio import load_export, read_export
    from transferkit.review_drop import DataDrop

    imported = read_export(load_export(export_file), classes)
    data_drop = DataDrop(drop, classes)
    for payload, label in imported.labels:
        data_drop.write(payload, label)
    skipped = f"; {imported.skipped} task(s) skipped (cancelled or no choice made)" if imported.skipped else ""
    console.print(f"{len(imported.labels)} label(s) -> {drop}{skipped}")
