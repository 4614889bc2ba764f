"""One training run from params: batches, the feature-cache decision, resume, the loop, calibration.

On the CPU (``feature_cache: auto``) the frozen bottom units run once per view of the
augmentation preset through ONNX Runtime and only the top trains; on CUDA the whole trainable
part runs end to end with live augmentation. The kept model's temperature is then fitted on the
validation split and travels in the checkpoint. A kill -9 mid-run resumes from the last epoch's
checkpoint when rerun with the same params and data.

Wall-clock figures (training seconds, throughput) are kept apart from everything else: the
checkpoint and the summary depend only on params, data and code, so a rerun reproduces them byte
for byte, and the times go to a file nobody versions.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from transferkit.config import Params
from transferkit.data.cache import PreparedData
from transferkit.errors import ConfigError
from transferkit.models.classifier import ImageClassifier, build_classifier
from transferkit.reporting import console
from transferkit.training.augment import Preset, build_transform, resolve_preset
from transferkit.training.batches import FeatureBatches, ImageBatches
from transferkit.training.calibration import Calibration, fit_temperature, uncalibrated
from transferkit.training.checkpoint import load_checkpoint, save_checkpoint
from transferkit.training.compute import Compute
from transferkit.training.distributed import World
from transferkit.training.feature_cache import FeatureCache, compute_features, onnx_trunk, torch_trunk, trunk_onnx
from transferkit.training.loop import Batches, EpochRecord, Trainer, class_weights, predict_logits
from transferkit.training.orientation import PROBE_IMAGES, ViewProbe, probe_features, probe_views
from transferkit.training.strategies import cut_index

LAST, BEST = "last.pt", "best.pt"
EpochHook = Callable[[EpochRecord], None]


@dataclass
class Fitted:
    """A finished run: the model at its best epoch and what to write about it."""

    model: ImageClassifier
    meta: dict[str, Any]  # the checkpoint's: what made it, its training summary, its calibration
    summary: dict[str, Any]  # deterministic figures: the same on every rerun
    timing: dict[str, Any]  # wall-clock figures: never in the checkpoint or git-tracked metrics
    history: list[dict[str, Any]]
    best_epoch: int
    calibration: Calibration


def training_indices(prepared: PreparedData, fraction: float, seed: int) -> np.ndarray:
    """The train split, or a stratified ``fraction`` of it (for data-efficiency studies)."""
    indices = prepared.indices("train")
    if fraction >= 1.0:
        return indices
    keep, _ = train_test_split(indices, train_size=fraction, stratify=prepared.labels(indices), random_state=seed)
    return np.sort(keep)


def checkpoint_meta(
    params: Params, prepared: PreparedData, model: ImageClassifier, cut: int, preset: Preset
) -> dict[str, Any]:
    return {
        "architecture": params.model.architecture,
        "weights": params.model.weights,
        "dropout": params.model.dropout,
        "class_names": prepared.class_names,
        "image_size": prepared.image_size,
        "resize": prepared.meta["resize"],
        "source": prepared.meta["source"],
        "unit_names": model.unit_names,
        "cut": cut,
        "strategy": params.train.strategy,
        "augment_preset": preset.name,
        "data_hash": prepared.data_hash,
        "params_hash": params.section_hash("data", "model", "train"),
        "params": {name: getattr(params, name).model_dump(mode="json") for name in ("data", "model", "train")},
    }


def _use_feature_cache(params: Params, compute: Compute, cut: int, world: World) -> bool:
    """The CPU path caches the frozen units' output; under torchrun every process trains end to end."""
    if cut == 0 or params.train.feature_cache == "off":
        return False
    if world.distributed:
        if params.train.feature_cache == "on":
            raise ConfigError(
                "train.feature_cache: on trains in one process; under torchrun set it to auto or off "
                "(each process then trains the network end to end)"
            )
        return False
    return params.train.feature_cache == "on" or compute.device.type == "cpu"


def build_batches(
    params: Params,
    prepared: PreparedData,
    model: ImageClassifier,
    cut: int,
    compute: Compute,
    threads: int,
    preset: Preset,
    world: World,
) -> tuple[Batches, Batches]:
    train_idx = training_indices(prepared, params.train.fraction, params.train.seed)
    val_idx = prepared.indices("val")
    train_labels = torch.from_numpy(prepared.labels(train_idx))
    val_labels = torch.from_numpy(prepared.labels(val_idx))
    model.eval()
    batch, seed = params.train.batch_size, params.train.seed
    if not _use_feature_cache(params, compute, cut, world):
        trunk = torch_trunk(model, cut, compute)
        augment = (preset, build_transform(params.train.augment, preset))
        return (
            ImageBatches(prepared.images_chw(train_idx), train_labels, batch, seed, trunk, augment, world),
            ImageBatches(prepared.images_chw(val_idx), val_labels, batch, seed, trunk),
        )
    graph = trunk_onnx(model, cut, prepared.image_size)
    on_cpu = compute.device.type == "cpu"
    trunk = onnx_trunk(graph, threads) if on_cpu else torch_trunk(model, cut, compute)
    cache = FeatureCache.open(
        params.paths.feature_cache,
        prepared,
        hashlib.sha256(graph).hexdigest(),
        architecture=params.model.architecture,
        weights=params.model.weights,
        cut=cut,
        runtime="onnxruntime-cpu" if on_cpu else f"torch-{compute.device.type}-{compute.precision}",
    )

    def features(indices: np.ndarray, views: tuple[int, ...], name: str) -> torch.Tensor:
        images = prepared.images_chw
        return cache.features(
            indices, views, lambda: compute_features(trunk, images(indices), views, 64, f"cache {name}")
        )

    return (
        FeatureBatches(features(train_idx, preset.views, "train"), train_labels, batch, seed),
        FeatureBatches(features(val_idx, (0,), "val"), val_labels, batch, seed),
    )


def view_probe(params: Params, prepared: PreparedData, model: ImageClassifier, threads: int) -> ViewProbe:
    """Run the view probe on a seeded sample of the training split (ONNX Runtime, CPU)."""
    train_idx = prepared.indices("train")
    sample = np.sort(np.random.default_rng(params.train.seed).permutation(train_idx)[:PROBE_IMAGES])
    features = probe_features(model, prepared.image_size, threads)
    return probe_views(features, prepared.images_chw(sample), prepared.labels(sample), params.train.seed)


def resume(trainer: Trainer, model: ImageClassifier, last: Path, fingerprint: str) -> bool:
    """Restore model and loop state from ``last`` if it belongs to this very run configuration."""
    if not last.is_file():
        return False
    payload = load_checkpoint(last)
    if payload["meta"].get("fingerprint") != fingerprint:
        console.print("[yellow]params or data changed since the last checkpoint; starting over[/]")
        return False
    model.load_state_dict(payload["model"])
    trainer.load_state_dict(payload["trainer"])
    console.print(f"resuming after epoch {trainer.next_epoch} from {last}")
    return True


def calibrate(params: Params, model: ImageClassifier, val: Batches, cut: int, compute: Compute) -> Calibration:
    """Fit the kept model's temperature on the validation split (``train.calibration``)."""
    logits, labels = predict_logits(model, val, cut, compute)
    fit_ = fit_temperature if params.train.calibration == "temperature" else uncalibrated
    return fit_(logits.numpy(), labels.numpy())


def discard_resume_point(params: Params) -> None:
    """The run finished and its model is written: resuming is only for interrupted runs (a rerun
    after a code change must retrain)."""
    (Path(params.paths.checkpoints) / LAST).unlink(missing_ok=True)


def fit(
    params: Params,
    world: World,
    threads: int,
    log_epoch: EpochHook | None = None,
    on_epoch: EpochHook | None = None,
) -> Fitted | None:
    """Train, keep the best epoch, calibrate; None on a torchrun rank other than 0 (rank 0 keeps the result).

    ``log_epoch`` sees every epoch, a resumed run's restored ones first (the curves stay complete);
    ``on_epoch`` sees each epoch this process trains (a tuning trial reports it to Optuna there,
    and stops the run by raising when the trial is pruned).
    """
    started = time.perf_counter()
    compute = Compute.from_params(params.train)
    compute = replace(compute, device=world.device(compute.device))
    world.start(compute.device.type, params.train.batch_size)
    prepared = PreparedData.load(params.paths.prepared)
    torch.manual_seed(params.train.seed)
    model = build_classifier(
        params.model.architecture, params.model.weights, len(prepared.class_names), params.model.dropout
    )
    cut = cut_index(params.train, model.num_units)
    preset, preset_choice = resolve_preset(
        params.train.augment, prepared.meta["source"], lambda: view_probe(params, prepared, model, threads)
    )
    console.print(f"augmentation preset {preset.name} ({preset_choice})", highlight=False)
    train_batches, val_batches = build_batches(params, prepared, model, cut, compute, threads, preset, world)
    weights = class_weights(train_batches.labels.numpy(), len(prepared.class_names), params.train.class_weighting)
    steps = -(-len(train_batches) // params.train.batch_size)
    trainer = Trainer(model, params.train, cut, compute, steps, weights, world)

    meta = checkpoint_meta(params, prepared, model, cut, preset)
    meta["fingerprint"] = meta["params_hash"] + meta["data_hash"]
    checkpoints = Path(params.paths.checkpoints)
    resume(trainer, model, checkpoints / LAST, meta["fingerprint"])  # every rank, so they stay in step
    if not world.is_main:  # the other ranks train their share; rank 0 writes everything
        while not trainer.should_stop():
            trainer.run_epoch(trainer.next_epoch, train_batches, val_batches)
        world.barrier()
        return None
    # A resumed run's training time counts the epochs it restored, so the study's time axis and
    # a tuning trial's cost do not shrink when a worker died mid-cell.
    restored = trainer.next_epoch
    restored_seconds = sum(r.seconds for r in trainer.history)
    for record in trainer.history:
        if log_epoch is not None:
            log_epoch(record)
    while not trainer.should_stop():
        record = trainer.run_epoch(trainer.next_epoch, train_batches, val_batches)
        console.print(
            f"epoch {record.epoch + 1}: train loss {record.train_loss:.4f}, val loss {record.val_loss:.4f}, "
            f"val acc {record.val_accuracy:.4f}, val macro-F1 {record.val_macro_f1:.4f}"
            + (" (best)" if record.is_best else ""),
            highlight=False,
        )
        if log_epoch is not None:
            log_epoch(record)
        if record.is_best:
            save_checkpoint(checkpoints / BEST, trainer.evaluation_model, meta)
        save_checkpoint(checkpoints / LAST, model, meta, trainer=trainer.state_dict())
        if on_epoch is not None:
            on_epoch(record)
    world.barrier()
    best = load_checkpoint(checkpoints / BEST)
    model.load_state_dict(best["model"])
    calibration = calibrate(params, model, val_batches, cut, compute)
    history = [asdict(r) for r in trainer.history]
    best_record = history[trainer.best_epoch]
    summary = {
        "best_epoch": trainer.best_epoch + 1,
        "epochs_run": len(history),
        "val_accuracy": best_record["val_accuracy"],
        "val_macro_f1": best_record["val_macro_f1"],
        "val_loss": best_record["val_loss"],
        "train_images": len(train_batches),
        "resumed_after_epoch": restored,
        "processes": world.size,
        **compute.describe(),
        "feature_cache": isinstance(train_batches, FeatureBatches),
        "augment_preset": preset.name,
        "augment_preset_choice": preset_choice,
        "ema_decay": round(trainer.ema_decay, 5),
        "temperature": round(calibration.temperature, 4),
    }
    timing = {
        "train_seconds": round(time.perf_counter() - started + restored_seconds, 1),
        "images_per_second": round(float(np.mean([r["images_per_second"] for r in history])), 1),
        "epoch_seconds": [round(r["seconds"], 1) for r in history],
    }
    best["meta"].update(training=summary, calibration=calibration.as_dict())
    return Fitted(model, best["meta"], summary, timing, history, trainer.best_epoch, calibration)
