"""Serve `training_pipeline` as a scheduled deployment (nightly retrain) on this machine.

prefect server start                     # UI at http://127.0.0.1:4200
python -m flows.deploy                   # registers + serves the deployment (keep it running)
prefect deployment run 'training_pipeline/nightly-retrain'
"""

from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

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


if __name__ == "__main__":
    serve(nightly_deployment())
