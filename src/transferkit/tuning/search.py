"""The search: an Optuna study in a journal file, trials as Prefect tasks on Dask.

A trial is self-contained, like a study cell: it opens the study from the journal, asks for its
params, trains on the pipeline's prepared data (``dvc repro prepare``) into its own folder,
reports every epoch's validation score (the pruner may stop it there) and tells the result.
Several drivers (``transferkit tune`` on several machines) can add trials to one study: they
only share the journal file. Trials never see the test split.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from tqdm import tqdm

from transferkit.config import Params, SearchDimension, TuneParams, parse_params, set_dotted
from transferkit.dask_runner import dask_task_runner, shared_prefect_api, threads_per_job
from transferkit.data.cache import META_FILE
from transferkit.errors import ConfigError, DataError
from transferkit.reporting import console
from transferkit.stages import train
from transferkit.training.loop import EpochRecord

JOURNAL = "journal.log"
DRIVER = "driver"  # trial attribute: which `transferkit tune` run asked for the trial
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneRun:
    states: dict[str, int] = field(default_factory=dict)
    best: dict[str, Any] | None = None


def open_study(tune: TuneParams, root: Path) -> optuna.Study:
    """The study in ``root``'s journal (created on first use). The sampler's seed moves with the
    trials already told, so a sequential search is reproducible and parallel askers differ."""
    root.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(root / JOURNAL)))
    study = optuna.create_study(study_name=tune.study_name, storage=storage, direction="maximize", load_if_exists=True)
    study.sampler = optuna.samplers.TPESampler(n_startup_trials=tune.startup_trials, seed=tune.seed + len(study.trials))
    study.pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.prune_after_epochs)
        if tune.pruning
        else optuna.pruners.NopPruner()
    )
    return study


def _current(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"tune.space: {dotted} is not a parameter (see `transferkit check-params`)")
        node = node[part]
    return node


def check_space(params: Params) -> None:
    """Refuse a space before any trial runs: every end of a range and every choice must make valid params."""
    raw = params.model_dump(mode="json")
    for key, dimension in params.tune.space.items():
        _current(raw, key)
        for value in dimension.choices if dimension.choices is not None else [dimension.low, dimension.high]:
            candidate = copy.deepcopy(raw)
            set_dotted(candidate, key, value)
            parse_params(candidate, f"tune.space ({key} = {value!r})")


def suggest(trial: optuna.Trial, key: str, dimension: SearchDimension, current: Any) -> Any:
    """One value for ``key``: a choice, an int range for an int param, else a float range."""
    if dimension.choices is not None:
        return trial.suggest_categorical(key, dimension.choices)
    assert dimension.low is not None and dimension.high is not None  # the section's validator says so
    if isinstance(current, int) and not isinstance(current, bool):
        return trial.suggest_int(key, int(dimension.low), int(dimension.high), log=dimension.log)
    return trial.suggest_float(key, dimension.low, dimension.high, log=dimension.log)


def trial_params(base: dict[str, Any], values: dict[str, Any], folder: Path, threads: int | None) -> Params:
    raw = copy.deepcopy(base)
    for key, value in values.items():
        set_dotted(raw, key, value)
    if threads:
        set_dotted(raw, "train.num_threads", threads)
    outputs = {"train": "model", "checkpoints": "checkpoints", "train_reports": "train"}
    raw["paths"].update({key: str(folder / name) for key, name in outputs.items()})
    return parse_params(raw, f"trial {folder.name}")


def pruning_reporter(trial: optuna.Trial, metric: str, scores: list[float]) -> Any:
    """The train stage's ``on_epoch``: report the epoch's validation score, stop a pruned trial."""

    def report(record: EpochRecord) -> None:
        scores.append(record.score(metric))
        trial.report(scores[-1], record.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {record.epoch + 1}")

    return report


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def trial_task(base: dict[str, Any], root: str, driver: str, threads: int | None) -> str:
    """Ask, train, tell; returns the trial's final state. A trial's own failure is told to the
    study (state FAIL with its error), not raised: retries only rerun a lost worker."""
    tune = parse_params(base).tune
    study = open_study(tune, Path(root))
    trial = study.ask()
    trial.set_user_attr(DRIVER, driver)
    scores: list[float] = []
    try:
        values = {key: suggest(trial, key, dim, _current(base, key)) for key, dim in tune.space.items()}
        params = trial_params(base, values, Path(root) / "trials" / f"{trial.number:04d}", threads)
        summary = train.run(params, on_epoch=pruning_reporter(trial, params.train.selection_metric, scores))
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED.name
    except Exception as error:  # a bad combination or a crash fails this trial only; the message is kept
        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL.name
    trial.set_user_attr("epochs_run", summary["epochs_run"])
    trial.set_user_attr("train_seconds", summary["train_seconds"])
    study.tell(trial, max(scores))
    return TrialState.COMPLETE.name


@flow(name="tune-trials")
def tune_trials(base: dict[str, Any], count: int, root: str, driver: str, threads: int | None) -> dict[str, int]:
    # Only module-level names here: Dask pickles this function (with the flow run's context) by value.
    return count_states([trial_task.submit(base, root, driver, threads) for _ in range(count)])


def count_states(futures: list[PrefectFuture[str]]) -> dict[str, int]:
    states: dict[str, int] = {}
    with tqdm(total=len(futures), desc="tuning trials", unit="trial") as progress:
        for future in as_completed(futures):
            state = future.result()
            states[state] = states.get(state, 0) + 1
            progress.update()
    return states


def base_raw(params: Params) -> dict[str, Any]:
    """The pipeline's params with ``tune.overrides`` applied: what every trial starts from."""
    raw = params.model_dump(mode="json")
    for key, value in params.tune.overrides.items():
        set_dotted(raw, key, value)
    parse_params(raw, "params with tune.overrides")
    return raw


def run_tune(params: Params, jobs: int | None = None, dask_address: str | None = None) -> TuneRun:
    """Run the trials still missing from ``tune.trials`` (a rerun continues the same study)."""
    check_space(params)
    if not (Path(params.paths.prepared) / META_FILE).is_file():
        raise DataError(f"no prepared data at {params.paths.prepared}: run `dvc repro prepare` first")
    tune, root = params.tune, Path(params.tune.root)
    base = base_raw(params)
    study = open_study(tune, root)
    if not study.trials:
        for values in tune.enqueue:
            study.enqueue_trial(values, skip_if_exists=True)
    finished = sum(t.state in FINISHED for t in study.trials)
    missing = max(0, tune.trials - finished)
    console.print(f"tune {root}: {finished} trials finished, {missing} to run")
    outcome = TuneRun()
    if missing:
        driver = uuid.uuid4().hex
        workers = min(jobs or tune.jobs, missing)
        threads = threads_per_job(workers, dask_address)
        with shared_prefect_api():
            flow_run = tune_trials.with_options(task_runner=dask_task_runner(workers, dask_address))
            outcome.states = flow_run(base, missing, str(root.resolve()), driver, threads)
        _fail_orphans(study, driver)
    return outcome


def _fail_orphans(study: optuna.Study, driver: str) -> None:
    """Trials this run asked for whose worker died stay RUNNING in the journal: mark them failed
    (another driver's running trials are left alone)."""
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.user_attrs.get(DRIVER) == driver:
            study.tell(frozen.number, state=TrialState.FAIL)
