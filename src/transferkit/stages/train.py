"""train: fine-tune the pretrained backbone with the configured strategy; keep the best epoch.

Glue only: the run itself (batches, the feature cache, resume, the loop, calibration) is
``training.fit``. This stage logs the curves with dvclive, writes the calibrated model to
``paths.train`` and its deterministic summary to the git-tracked metrics, and the wall-clock
figures to ``timing.json`` beside them, which neither git nor DVC tracks: a rerun on the same
params and data reproduces the checkpoint and ``dvc.lock`` byte for byte.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from dvclive import Live

from transferkit.config import Params
from transferkit.evaluation.plots import training_curves_figure
from transferkit.io import write_json
from transferkit.stages.common import configure_threads, console, main
from transferkit.training.checkpoint import MODEL, save_checkpoint
from transferkit.training.distributed import World
from transferkit.training.fit import EpochHook, discard_resume_point, fit
from transferkit.training.loop import EpochRecord

TIMING_FILE = "timing.json"  # in paths.train_reports; ignored by git, not a DVC output


def timing_path(params: Params) -> Path:
    return Path(params.paths.train_reports) / TIMING_FILE


def run(params: Params, on_epoch: EpochHook | None = None) -> dict[str, Any]:
    """Train, keep the best epoch, calibrate; returns the summary with its timings. ``on_epoch``
    sees every epoch trained (a tuning trial reports and prunes there).

    Under ``torchrun`` this process is one rank of a data-parallel run (training/distributed.py).
    """
    world = World.from_env()
    try:
        threads = configure_threads(params.train.num_threads or world.cores_per_process)
        if not world.is_main:
            fit(params, world, threads)
            return {"rank": world.rank}
        with Live(dir=params.paths.train_reports, save_dvc_exp=False, dvcyaml=None, report=None) as live:
            fitted = fit(params, world, threads, lambda record: _log_epoch(live, record), on_epoch)
            assert fitted is not None  # rank 0 always gets the result
            live.summary = {key: value for key, value in fitted.summary.items() if isinstance(value, int | float)}
            live.log_image("training_curves.png", training_curves_figure(fitted.history, fitted.best_epoch))
    finally:
        world.stop()
    save_checkpoint(Path(params.paths.train) / MODEL, fitted.model, fitted.meta)
    write_json(timing_path(params), fitted.timing)
    discard_resume_point(params)
    calibration = fitted.calibration
    console.print(
        f"best epoch {fitted.summary['best_epoch']} (val macro-F1 {fitted.summary['val_macro_f1']:.4f}) "
        f"-> {params.paths.train}/{MODEL} in {fitted.timing['train_seconds']} s; temperature "
        f"{calibration.temperature:.3f} (val NLL {calibration.val_nll_before:.4f} -> {calibration.val_nll_after:.4f})"
    )
    return fitted.summary | fitted.timing


def _log_epoch(live: Live, record: EpochRecord) -> None:
    values = asdict(record)
    for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr"):
        live.log_metric(key.replace("_", "/", 1), values[key])
    live.next_step()


if __name__ == "__main__":
    main(run)
