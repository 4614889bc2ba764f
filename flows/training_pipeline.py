"""Prefect flow `training_pipeline`: data sync -> prepare -> train -> evaluate -> gate -> export -> promote.

Thin on purpose: each task calls a function of `transferkit.orchestration`, and stages run as
`dvc repro <stage>`, so DVC skips what has not changed and `dvc.lock` records what ran. Deterministic
failures (invalid params, a failed gate) are never retried; I/O steps (data pull, promotion) are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.requests import ProjectRequest
from transferkit import orchestration
from transferkit.config import Params, Strategy
from transferkit.orchestration import STAGES, TransientError
from transferkit.registry import Registry


class TrainingRequest(ProjectRequest):
    data_path: str | None = None
    strategy: Strategy | None = None
    registry: str = "elpv-defects"
    registry_root: str = "models/registry"
    webhook_url: str | None = None


def _retry_transient(task, task_run, state) -> bool:
    """Retry only failures that may pass on retry, never deterministic ones."""
    try:
        state.result()
    except TransientError:
        return True
    except Exception:
        return False
    return False


IO_TASK = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_condition_fn": _retry_transient,
}


@task(cache_policy=NO_CACHE)
def validate_params(project: Path, params_file: str, overrides: dict[str, Any]) -> Params:
    return orchestration.apply_overrides(project / params_file, overrides)


@task(**IO_TASK, cache_policy=NO_CACHE)
def sync_data(project: Path, data_path: str) -> str:
    data_hash = orchestration.sync_data(project, data_path)
    get_run_logger().info("data %s at DVC hash %s", data_path, data_hash)
    return data_hash


@task(cache_policy=NO_CACHE)  # DVC is the cache: an unchanged stage is skipped by `dvc repro`
def run_stage(project: Path, stage: str, params: Params) -> str:
    log = orchestration.repro_stage(project, stage, params)
    get_run_logger().info("%s", log.strip()[-2000:])
    return log


@task(**IO_TASK, cache_policy=NO_CACHE)
def promote(project: Path, params: Params, registry: Registry, data_hash: str) -> tuple[int, bool]:
    return orchestration.promote_candidate(project, params, registry, data_hash)


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


@flow(name="training_pipeline", on_failure=[notify_failure], log_prints=True)
def training_pipeline(request: TrainingRequest = TrainingRequest()) -> dict[str, Any]:
    project = Path(request.project_dir).resolve()
    registry = Registry(project / request.registry_root, request.registry)
    production = registry.production()
    overrides = dict(request.overrides)
    if request.strategy:
        overrides["train.strategy"] = request.strategy
    if request.data_path:
        overrides["data.path"] = request.data_path
    # The gate compares the candidate with the model in production ("no worse than production").
    baseline = registry.version_dir(production) / "metrics.json" if production is not None else None
    overrides["gate.baseline_metrics"] = str(baseline.relative_to(project)) if baseline else None

    params = validate_params(project, request.params_file, overrides)
    data_hash = sync_data(project, params.data.path)
    for stage in STAGES:
        run_stage(project, stage, params)
    production_metrics = registry.production_metrics()
    version, is_new = promote(project, params, registry, data_hash)

    candidate = orchestration.read_json(project / params.paths.evaluate / "metrics.json")
    confusion = project / params.paths.evaluate / "confusion_matrix.png"
    create_markdown_artifact(
        key="candidate-vs-production",
        markdown=orchestration.comparison_markdown(candidate, production_metrics, version)
        + f"\n\nConfusion matrix: `{confusion}`\n\n"
        + ("New production version." if is_new else "Unchanged model: production version kept."),
    )
    return {"version": version, "new_version": is_new, "accuracy": candidate["accuracy"], "data_hash": data_hash}
