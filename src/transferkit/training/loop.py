"""The training loop: AdamW, warmup + cosine, label smoothing, early stopping on validation.

Inputs arrive already at unit ``cut`` (cached features, or images run through the frozen units),
so the same loop serves every strategy, the CPU feature-cache path and the GPU end-to-end path.
All loop state lives in ``Trainer.state_dict()`` so a killed run resumes from its last epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from transferkit.config import TrainParams
from transferkit.models.classifier import ImageClassifier
from transferkit.training.compute import Compute
from transferkit.training.distributed import World, trainable_top
from transferkit.training.strategies import lowest_trainable, param_groups, set_trainable


class Batches(Protocol):
    """An epoch's worth of (inputs at unit ``cut``, labels)."""

    labels: torch.Tensor

    def __len__(self) -> int: ...

    def batches(self, epoch: int, shuffle: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
    """'balanced' weights n / (k * count_c), as scikit-learn's compute_class_weight defines them."""
    if mode == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = len(labels) / (num_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


# A warm-up longer than this share of the run would leave a short run (one epoch of a linear
# probe) at a fraction of its learning rate throughout.
MAX_WARMUP_SHARE = 0.1
# Below this many optimiser steps in the EMA's horizon there is nothing to average: the EMA is off.
MIN_EMA_STEPS = 10


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_epochs: int, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up (``warmup_epochs``, at most ``MAX_WARMUP_SHARE`` of the run), then cosine decay."""
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(warmup_epochs * steps_per_epoch, int(MAX_WARMUP_SHARE * total_steps))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps))
    if warmup_steps == 0:
        return cosine
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])


def ema_decay(horizon_epochs: float, steps_per_epoch: int) -> float:
    """Per-step decay of an EMA whose time constant is ``horizon_epochs`` (0.0: no EMA).

    A horizon in epochs, not a fixed per-step decay: 0.99 per step averaged over two epochs of
    ELPV but over seventeen at 10 % of it, longer than the run.
    """
    horizon_steps = horizon_epochs * steps_per_epoch
    return 0.0 if horizon_steps < MIN_EMA_STEPS else 1.0 - 1.0 / horizon_steps


def warming_ema(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """EMA update whose decay grows as (1 + n) / (10 + n) up to ``decay`` after n updates.

    The warm-up of TensorFlow's ExponentialMovingAverage (``num_updates``): without it the
    average clings to the random initial head for the first horizon of steps, which on a
    short run is the whole run.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor) -> None:
        n = float(updates)
        get_ema_multi_avg_fn(min(decay, (1 + n) / (10 + n)))(averaged, current, updates)

    return update


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_macro_f1: float
    lr: float
    lowest_trainable_unit: int
    images_per_second: float
    seconds: float = 0.0  # the epoch's wall time, validation included (0 in checkpoints older than it)
    is_best: bool = False

    def score(self, metric: str) -> float:
        """Higher is better for every selection metric (the loss is negated)."""
        return -self.val_loss if metric == "loss" else getattr(self, f"val_{metric}")


@dataclass
class Trainer:
    model: ImageClassifier
    params: TrainParams
    cut: int
    compute: Compute
    steps_per_epoch: int
    weights: torch.Tensor | None = None
    world: World = field(default_factory=World)
    history: list[EpochRecord] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = -1

    def __post_init__(self) -> None:
        self.compute.place_model(self.model)
        self.top = trainable_top(self.model, self.cut, self.world)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, self.params, self.cut))
        self.scheduler = build_scheduler(
            self.optimizer, self.params.warmup_epochs, self.steps_per_epoch, self.params.epochs
        )
        weight = self.weights.to(self.compute.device) if self.weights is not None else None
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=self.params.label_smoothing)
        # An exponential moving average of the weights (BatchNorm statistics included) is what gets
        # validated and kept: it smooths the epoch-to-epoch swings of the raw weights.
        self.ema_decay = ema_decay(self.params.ema_epochs, self.steps_per_epoch)
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=warming_ema(self.ema_decay), use_buffers=True)
            if self.ema_decay
            else None
        )

    @property
    def evaluation_model(self) -> ImageClassifier:
        """The weights that are validated and saved: the EMA when enabled, else the raw model."""
        return self.ema.module if self.ema is not None else self.model

    # --- state for checkpoints -------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": [vars(r).copy() for r in self.history],
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.best_score, self.best_epoch = float(state["best_score"]), int(state["best_epoch"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    @property
    def next_epoch(self) -> int:
        return len(self.history)

    def should_stop(self) -> bool:
        if self.next_epoch >= self.params.epochs:
            return True
        return self.next_epoch - 1 - self.best_epoch >= self.params.early_stopping_patience

    # --- one epoch -------------------------------------------------------------------------
    def train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimiser step on a batch that starts at unit ``cut``; returns the batch loss."""
        inputs, labels = self.compute.to_device(inputs), labels.to(self.compute.device)
        with self.compute.autocast():
            loss = self.criterion(self.top(inputs).float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return float(loss.detach())

    def run_epoch(self, epoch: int, train: Batches, val: Batches) -> EpochRecord:
        torch.manual_seed(self.params.seed * 100_003 + epoch)  # dropout/augmentation: same on resume
        lowest = lowest_trainable(self.params, self.model.num_units, epoch)
        self.model.train()
        set_trainable(self.model, lowest)
        self.top = trainable_top(self.model, self.cut, self.world)
        total_loss, seen, started = 0.0, 0, time.perf_counter()
        with tqdm(
            total=len(train),
            desc=f"epoch {epoch + 1}/{self.params.epochs}",
            unit="img",
            dynamic_ncols=True,
            disable=not self.world.is_main,
        ) as bar:
            for inputs, labels in train.batches(epoch, shuffle=True):
                loss = self.train_step(inputs, labels)
                total_loss += loss * len(labels)
                seen += len(labels)
                bar.update(len(labels))
                bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        total_loss, seen = self.world.total(total_loss, seen)  # every rank's share of the epoch
        throughput = seen / max(time.perf_counter() - started, 1e-9)
        val_loss, accuracy, macro_f1 = self.validate(val)
        record = EpochRecord(
            epoch=epoch,
            train_loss=total_loss / max(seen, 1),
            val_loss=val_loss,
            val_accuracy=accuracy,
            val_macro_f1=macro_f1,
            lr=self.optimizer.param_groups[-1]["lr"],
            lowest_trainable_unit=lowest,
            images_per_second=throughput,
            seconds=time.perf_counter() - started,
        )
        score = record.score(self.params.selection_metric)
        record.is_best = score > self.best_score
        if record.is_best:
            self.best_score, self.best_epoch = score, epoch
        self.history.append(record)
        return record

    def validate(self, val: Batches) -> tuple[float, float, float]:
        logits, labels = predict_logits(self.evaluation_model, val, self.cut, self.compute)
        loss = float(nn.functional.cross_entropy(logits, labels))
        predicted = logits.argmax(1).numpy()
        return (
            loss,
            float(accuracy_score(labels.numpy(), predicted)),
            float(f1_score(labels.numpy(), predicted, average="macro", zero_division=0)),
        )


@torch.inference_mode()
def predict_logits(
    model: ImageClassifier, batches: Batches, cut: int, compute: Compute
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 logits (and labels) of ``batches``, whose inputs start at unit ``cut``, in order."""
    model.eval()
    logits, labels = [], []
    for inputs, target in batches.batches(0, shuffle=False):
        with compute.autocast():
            logits.append(model.forward_top(compute.to_device(inputs), cut).float().cpu())
        labels.append(target)
    return torch.cat(logits), torch.cat(labels)
