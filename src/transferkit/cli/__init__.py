"""The ``transferkit`` command: pipeline stages, data set-up, the registry, research and serving.

Every command is registered here, by name, from the module of its group; a command's errors
reach the user through ``common.reports_errors``.
"""

from __future__ import annotations

import typer

from transferkit.cli import pipeline, registry, research, review, serving

app = typer.Typer(
    help="Fine-tune a pretrained image model, gate it, export it as a verified ONNX model, and serve it.",
    no_args_is_help=True,
    add_completion=False,
)

# The pipeline, as dvc.yaml runs it, and raw data set-up.
app.command("prepare", rich_help_panel="Pipeline")(pipeline.prepare)
app.command("train", rich_help_panel="Pipeline")(pipeline.train)
app.command("evaluate", rich_help_panel="Pipeline")(pipeline.evaluate)
app.command("gate", rich_help_panel="Pipeline")(pipeline.gate)
app.command("export", rich_help_panel="Pipeline")(pipeline.export)
app.command("check-params", rich_help_panel="Pipeline")(pipeline.check_params)
app.add_typer(pipeline.data_app, name="data", rich_help_panel="Pipeline")

# The registry of promoted models.
app.add_typer(registry.registry_app, name="registry", rich_help_panel="Registry")

# Research: the study, the recipe table, tuning, ensembles.
app.command("study", rich_help_panel="Research")(research.study)
app.command("recipes", rich_help_panel="Research")(research.recipes)
app.command("tune", rich_help_panel="Research")(research.tune)
app.command("ensemble", rich_help_panel="Research")(research.ensemble)

# Using an exported model.
app.command("serve", rich_help_panel="Using a model")(serving.serve)
app.command("predict", rich_help_panel="Using a model")(serving.predict)
app.command("explain", rich_help_panel="Using a model")(serving.explain)
app.command("export-triton", rich_help_panel="Using a model")(serving.export_triton)

# People in the loop: suspected label errors, Label Studio out and back.
app.add_typer(review.review_app, name="review", rich_help_panel="Review")
