"""Serve `training_pipeline` (nightly retrain) and `study` (on demand) as deployments on this machine.

prefect server start                     # UI at http://127.0.0.1:4200
python -m flows.deploy                   # registers + serves the deployments (keep it running)
prefect deployment run 'training_pipeline/nightly-retrain'
prefect deployment run 'study/strategy-study'
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.study_pipeline import StudyRequest, study_pipeline
from flows.training_pipeline import TrainingRequest, training_pipeline

NIGHTLY_CRON = "0 2 * * *"


def nightly_deployment(request: TrainingRequest | None = None) -> RunnerDeployment:
    return training_pipeline.to_deployment(
        name="nightly-retrain",
        cron=NIGHTLY_CRON,
        parameters={"request": (request or TrainingRequest()).model_dump()},
        description="Retrain, gate and promote the transferkit model every night at 02:00.",
        tags=["transferkit"],
    )


def study_deployment(request: StudyRequest | None = None) -> RunnerDeployment:
    """The strategy x fraction study, run on demand (it is hours of GPU time, not a nightly job)."""
    return study_pipeline.to_deployment(
        name="strategy-study",
        parameters={"request": (request or StudyRequest()).model_dump()},
        description="Run (or resume) the strategy x data-fraction study and publish its report.",
        tags=["transferkit", "study"],
    )


if __name__ == "__main__":
    serve(nightly_deployment(), study_deployment())
