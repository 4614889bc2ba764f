"""Prefect flow `training_pipeline`: data sync -> prepare -> train -> evaluate -> gate -> export -> promote.

Thin on purpose: each task calls a function of `transferkit.orchestration`, and stages run as
`dvc repro <stage>`, so DVC skips what has not changed and `dvc.lock` records what ran. Deterministic
failures (invalid params, a failed gate) are never retried; I/O steps (data pull, promotion) are.

Every run works in its own git worktree of the committed revision (`transferkit.run_workspace`):
its overrides and the production baseline live in that worktree's params.yaml only, so the
project's params.yaml, dvc.lock and outputs change only by a person's commit, and the registry
only by a promotion. Runs may overlap; the promotion of one registry is serialized by a Prefect
global concurrency limit and re-checks the candidate against the production of that moment.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.tasks import exponential_backoff
from pydantic import Field

from flows.retries import retry_transient
from flows.run_requests import ProjectRequest
from transferkit import orchestration
from transferkit.config import Params, Strategy
from transferkit.orchestration import STAGES
from transferkit.registry import METRICS, Registry
from transferkit.run_workspace import RunWorkspace, deployment_home, run_workspace, use_home_storage


class TrainingRequest(ProjectRequest):
    data_path: str | None = None
    strategy: Strategy | None = None
    registry: str = "elpv-defects"
    registry_root: str = "models/registry"
    webhook_url: str | None = None
    # other precisions exported (and verified) in the same run, registered beside the model
    variants: list[Literal["fp16", "int8"]] = Field(default_factory=list)


IO_TASK = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_condition_fn": retry_transient,
}


@task(cache_policy=NO_CACHE)
def configure_run(workspace: RunWorkspace, params_file: str, overrides: dict[str, Any]) -> Params:
    """The committed params plus this run's overrides, validated, in the run's worktree only."""
    return workspace.apply(params_file, overrides)


@task(**IO_TASK, cache_policy=NO_CACHE)
def sync_data(project: Path, data_path: str) -> str:
    data_hash = orchestration.sync_data(project, data_path)
    get_run_logger().info("data %s at DVC hash %s", data_path, data_hash)
    return data_hash


@task(**IO_TASK, cache_policy=NO_CACHE)
def check_out_data(workspace: RunWorkspace, data_path: str, origin: Path | None = None) -> None:
    workspace.link_data(data_path, origin)


@task(**IO_TASK, cache_policy=NO_CACHE)
def ingest_reviewed(home: Path, drop: str) -> str:
    data_hash = orchestration.ingest_reviewed(home, drop)
    get_run_logger().info("reviewed drop %s at DVC hash %s", drop, data_hash)
    return data_hash


@task(cache_policy=NO_CACHE)  # DVC is the cache: an unchanged stage is skipped by `dvc repro`
def run_stage(workspace: RunWorkspace, stage: str, params: Params) -> str:
    log = orchestration.repro_stage(workspace.path, stage, params)
    get_run_logger().info("%s", log.strip()[-2000:])
    return log


@task(cache_policy=NO_CACHE)
def export_variant(workspace: RunWorkspace, params: Params, precision: str) -> dict[str, Path]:
    return orchestration.export_variant(workspace.path, params, precision)


@task(**IO_TASK, cache_policy=NO_CACHE)
def promote(
    workspace: RunWorkspace, params: Params, registry: Registry, record: dict[str, Any], variants: dict[str, Path]
) -> tuple[int, bool]:
    """Register and promote, one run per registry at a time, against the production of that moment."""
    with registry_slot(registry):
        return orchestration.promote_candidate(workspace.path, params, registry, record, variants)


def registry_slot(registry: Registry) -> AbstractContextManager[None]:
    """A Prefect global concurrency limit of 1 per registry (created on first use)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    name = f"transferkit-registry-{registry.name}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return concurrency(name, occupy=1, strict=True)


def notify_failure(flow, flow_run, state) -> None:
    """On failure: an artifact with the reason, and a webhook post when one is configured."""
    import httpx

    message = str(state.message or "failed")
    create_markdown_artifact(key="training-failure", markdown=f"## Training run failed\n\n```\n{message}\n```")
    webhook = (flow_run.parameters.get("request") or {}).get("webhook_url")
    if webhook:
        try:
            httpx.post(webhook, json={"flow_run": flow_run.name, "state": "Failed", "message": message}, timeout=5)
        except httpx.HTTPError as error:  # a broken webhook must never fail the flow
            get_run_logger().warning("failure webhook %s did not answer: %s", webhook, error)


def run_overrides(request: TrainingRequest) -> dict[str, Any]:
    """What this run changes on top of the committed params (the baseline is added per run)."""
    overrides = dict(request.overrides)
    if request.strategy:
        overrides["train.strategy"] = request.strategy
    if request.data_path:
        overrides["data.path"] = request.data_path
    return overrides


@flow(name="training_pipeline", on_failure=[notify_failure], log_prints=True)
def training_pipeline(request: TrainingRequest = TrainingRequest()) -> dict[str, Any]:
    project = Path(request.project_dir).resolve()
    # A deployed run executes in a clone of the checkout it was deployed from (its home): the data,
    # the DVC and feature caches and the registry are the home's, so a promotion outlives the clone.
    home = deployment_home(project)
    use_home_storage(project, home)
    registry = Registry(home / request.registry_root, request.registry)
    overrides = run_overrides(request)
    production = registry.production()
    production_metrics = registry.production_metrics()
    # The gate compares the candidate with the model in production ("no worse than production"),
    # passed to this run alone; promotion re-checks it if production moves meanwhile.
    baseline = registry.version_dir(production) / METRICS if production is not None else None

    with run_workspace(project, home) as workspace:
        params = configure_run(
            workspace, request.params_file, {**overrides, "gate.baseline_metrics": str(baseline) if baseline else None}
        )
        data_hash = sync_data(project, params.data.path)
        check_out_data(workspace, params.data.path)
        # Images people reviewed (the review page's drops) join train and val as their own versions.
        reviewed = {drop: ingest_reviewed(home, drop) for drop in orchestration.reviewed_drops(home, params)}
        for drop in reviewed:
            check_out_data(workspace, drop, home)
        logs = [run_stage(workspace, stage, params) for stage in STAGES]
        variants = {
            k: v for precision in request.variants for k, v in export_variant(workspace, params, precision).items()
        }
        record = {
            "data_hash": data_hash,
            "reviewed_data": reviewed,
            "git_commit": workspace.revision,
            "overrides": overrides,
        }
        version, is_new = promote(workspace, params, registry, record, variants)
        candidate = orchestration.read_json(workspace.path / params.paths.evaluate / "metrics.json")

    create_markdown_artifact(
        key="candidate-vs-production",
        markdown=orchestration.comparison_markdown(candidate, production_metrics, version)
        + "\n\n"
        + orchestration.run_record_markdown(record)
        + "\n\n"
        + ("New production version." if is_new else "Unchanged model: production version kept."),
    )
    return {
        "version": version,
        "new_version": is_new,
        "accuracy": candidate["accuracy"],
        "data_hash": data_hash,
        "git_commit": workspace.revision,
        "stages_run": orchestration.stages_run(logs),  # the others were restored from DVC's run cache
    }
