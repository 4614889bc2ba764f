"""What the per-run worktree costs: a training run whose stages are all cached, isolated vs in place.

Needs the project's pipeline up to date (`dvc repro` first). In one run, side by side:
- in place: `dvc repro <stage>` for every stage in the project itself (what runs did before);
- isolated: the same in a fresh worktree of HEAD (creation, params, data checkout from the
  shared DVC cache, every stage restored from the run cache, removal), phase by phase;
- the whole `training_pipeline` flow under a Prefect test harness, twice into a temporary
  registry: the first promotes v1, the second (timed) finds everything cached.

    PYTHONPATH=. DO_NOT_TRACK=1 PREFECT_HOME=$(mktemp -d) .venv/bin/python benchmarks/flow_overhead.py [--rounds 3]

Writes benchmarks/results/flow_overhead.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from results import write_results
from transferkit.config import load_params
from transferkit.orchestration import STAGES, repro_stage
from transferkit.run_workspace import run_workspace

PROJECT = Path(__file__).resolve().parents[1]


def in_place() -> float:
    params = load_params(PROJECT / "params.yaml")
    started = time.perf_counter()
    for stage in STAGES:
        repro_stage(PROJECT, stage, params)
    return time.perf_counter() - started


def isolated() -> dict[str, float]:
    phases: dict[str, float] = {}
    started = last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        phases[name] = now - last
        last = now

    with run_workspace(PROJECT) as workspace:
        lap("create worktree + share DVC cache")
        params = workspace.apply("params.yaml", {})
        workspace.link_data(params.data.path)
        lap("params + data checkout")
        for stage in STAGES:
            repro_stage(workspace.path, stage, params)
        lap("dvc repro, all stages cached")
    lap("remove worktree")
    phases["total"] = time.perf_counter() - started
    return phases


def whole_flow(registry_root: Path) -> float:
    from flows.training_pipeline import TrainingRequest, training_pipeline
    from prefect.testing.utilities import prefect_test_harness

    request = TrainingRequest(project_dir=str(PROJECT), registry="overhead", registry_root=str(registry_root))
    with prefect_test_harness(server_startup_timeout=90):
        training_pipeline(request)  # promotes v1
        started = time.perf_counter()
        result = training_pipeline(request)
        seconds = time.perf_counter() - started
    assert not {"prepare", "train", "evaluate"} & set(result["stages_run"]), result
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    place, runs = [], []
    for _ in range(args.rounds):
        place.append(in_place())
        runs.append(isolated())
    with tempfile.TemporaryDirectory() as registry:
        flow_seconds = whole_flow(Path(registry))
    median = {phase: round(statistics.median(r[phase] for r in runs), 2) for phase in runs[0]}
    result = {
        "in_place_s": round(statistics.median(place), 2),
        "isolated_s": median,
        "overhead_s": round(median["total"] - statistics.median(place), 2),
        "flow_all_cached_s": round(flow_seconds, 1),
        "rounds": {"in_place": place, "isolated": runs},
    }
    lines = [
        "| step (all stages cached) | seconds |",
        "|---|---|",
        f"| in place: `dvc repro` of the 5 stages | {result['in_place_s']} |",
        *(f"| isolated: {phase} | {seconds} |" for phase, seconds in median.items()),
        f"| isolation overhead (isolated total - in place) | {result['overhead_s']} |",
        f"| whole `training_pipeline` flow run, everything cached | {result['flow_all_cached_s']} |",
    ]
    write_results("flow_overhead", result, lines)


if __name__ == "__main__":
    main()
