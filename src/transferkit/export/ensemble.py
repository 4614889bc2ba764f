"""An ensemble of trained tops on one shared frozen trunk, with optional test-time augmentation,
exported as one ONNX graph and measured on the test split.

Models trained with the same frozen bottom units (finetune or gradual seeds, a linear probe)
compute the same trunk activations, so the graph runs the trunk once and repeats only the tops:
an ensemble of three costs about one model plus two tops, not three models. Test-time
augmentation averages over the views the models were trained on (the augmentation preset's
flips and quarter turns), which multiplies the whole cost by the number of views. The members'
calibrated logits are averaged, so ``softmax(logits) == probabilities`` holds as for any export,
and the graph keeps the uint8-in / fp32-out contract: serving, predict and downstream apps take
it unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.data.cache import PreparedData
from transferkit.errors import ModelError
from transferkit.evaluation.metrics import classification_metrics, expected_calibration_error, softmax
from transferkit.export.contract import INPUT_NAME, model_metadata
from transferkit.export.onnx_export import check_parity, export_onnx
from transferkit.io import atomic_write, write_json
from transferkit.onnx_runtime import CPU, create_session
from transferkit.stages.export import onnx_logits
from transferkit.study import stats
from transferkit.study.store import encode_labels
from transferkit.training.augment import PRESETS
from transferkit.training.checkpoint import checkpoint_temperature, load_checkpoint, model_from_checkpoint
from transferkit.training.feature_cache import apply_view

# What members must agree on to be averaged: the same classes, input and data.
SHARED_META = ("class_names", "image_size", "resize", "data_hash", "augment_preset")


class SharedTrunkEnsemble(nn.Module):
    """Mean calibrated logits of ``members`` over ``views``, the trunk (units below ``cut``) run once."""

    def __init__(self, members: list[nn.Module], temperatures: list[float], cut: int, views: tuple[int, ...]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("temperatures", torch.tensor(temperatures).view(-1, 1, 1, 1))
        self.cut, self.views = cut, views

    def member_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits of every member on every view: (members, views, batch, classes)."""
        viewed = torch.cat([apply_view(images, view) for view in self.views]) if len(self.views) > 1 else images
        features = self.members[0].trunk(viewed, self.cut)
        logits = torch.stack([member.forward_top(features, self.cut) for member in self.members])
        # The batch axis as -1: a traced len(images) would freeze the ONNX graph's dynamic batch at 1.
        return logits.view(len(self.members), len(self.views), -1, logits.shape[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (self.member_logits(images) / self.temperatures).mean((0, 1))


@dataclass
class Member:
    path: Path
    payload: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        return self.payload["meta"]


def load_members(paths: list[Path]) -> list[Member]:
    members = [Member(path, load_checkpoint(path)) for path in paths]
    first = members[0]
    for member in members[1:]:
        for key in SHARED_META:
            if member.meta[key] != first.meta[key]:
                raise ModelError(
                    f"{member.path} has {key} {member.meta[key]!r} but {first.path} has {first.meta[key]!r}; "
                    "ensemble models trained on the same prepared data and augmentation preset"
                )
    return members


def shared_cut(models: list[nn.Module], cuts: list[int]) -> int:
    """The lowest frozen cut among the members, after checking that the units below it are identical."""
    cut = min(cuts)
    reference = models[0].state_dict()
    trunk_prefixes = tuple(f"units.{unit}." for unit in range(cut))
    for position, model in enumerate(models[1:], start=1):
        for name, tensor in model.state_dict().items():
            in_trunk = name.startswith(trunk_prefixes) or name in ("mean", "std")
            if in_trunk and not torch.equal(tensor, reference[name]):
                raise ModelError(
                    f"member {position} differs from member 0 in {name}, below the shared cut {cut}: only models "
                    "with the same frozen units and pretrained weights share a trunk (scratch models never do)"
                )
    return cut


def build_ensemble(members: list[Member], tta: bool) -> SharedTrunkEnsemble:
    models = [model_from_checkpoint(member.payload) for member in members]
    cut = shared_cut(models, [int(member.meta["cut"]) for member in members])
    views = PRESETS[members[0].meta["augment_preset"]].views if tta else (0,)
    temperatures = [checkpoint_temperature(member.payload) for member in members]
    return SharedTrunkEnsemble(models, temperatures, cut, views).eval()


def member_logits(ensemble: SharedTrunkEnsemble, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    with torch.no_grad():
        return torch.cat(
            [ensemble.member_logits(images[i : i + batch_size]) for i in range(0, len(images), batch_size)], dim=2
        ).numpy()


def ms_per_image(model_bytes: bytes, images: np.ndarray, batch_size: int = 8, rounds: int = 5) -> float:
    """ONNX Runtime milliseconds per image at ``batch_size`` on this machine (after one warm-up call)."""
    session, batch = create_session(model_bytes, [CPU]), images[:batch_size]
    session.run(None, {INPUT_NAME: batch})
    started = time.perf_counter()
    for _ in range(rounds):
        session.run(None, {INPUT_NAME: batch})
    return round(1000 * (time.perf_counter() - started) / (rounds * len(batch)), 2)


@dataclass(frozen=True)
class TestSplit:
    labels: np.ndarray
    groups: list[str]
    names: list[str]
    bins: int


def headline(logits: np.ndarray, raw: np.ndarray, test: TestSplit) -> dict[str, Any]:
    """Test metrics of calibrated ``logits`` (``raw``: the same before temperature scaling), with
    95 % bootstrap intervals over the test images for accuracy and macro-F1."""
    labels, names = test.labels, test.names
    metrics = classification_metrics(logits, labels, test.groups, names, test.bins)
    metrics["ece_uncalibrated"] = expected_calibration_error(softmax(raw), labels, test.bins)
    intervals = stats.headline_intervals(labels, [logits.argmax(1)], len(names))
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], **intervals, "metrics": metrics}


def run_ensemble(
    paths: list[Path], prepared_root: Path, out: Path, tta: bool, tolerance: float, bins: int
) -> dict[str, Any]:
    """Build, verify and measure the ensemble of ``paths``; write ``model.onnx`` and ``ensemble.json`` to ``out``.

    The report keeps what the recipe table needs to list the ensemble as a try (``transferkit
    recipes``): each member's params and training cost, and the ensemble's test predictions.
    """
    started = time.perf_counter()
    members = load_members(paths)
    prepared = PreparedData.load(prepared_root)
    test = prepared.indices("test")
    images, labels, size = prepared.images_chw(test), prepared.labels(test), prepared.image_size
    split = TestSplit(labels, prepared.groups(test), prepared.class_names, bins)
    if members[0].meta["image_size"] != size or members[0].meta["class_names"] != split.names:
        raise ModelError(f"the models were trained on other prepared data than {prepared_root}; pass the right one")

    ensemble = build_ensemble(members, tta)
    raw = member_logits(ensemble, images)  # one pass: the trunk once, every top, every view
    temperatures = ensemble.temperatures.numpy()
    reference = (raw / temperatures).mean((0, 1))
    alone = [headline(raw[m, 0] / temperatures[m, 0], raw[m, 0], split) for m in range(len(members))]
    measured = headline(reference, raw.mean((0, 1)), split)
    metadata = model_metadata(members[0].meta, measured["metrics"], "fp32") | {
        "ensemble": {"members": [str(p) for p in paths], "shared_cut": ensemble.cut, "tta_views": list(ensemble.views)}
    }
    model_bytes = export_onnx(ensemble, size, 17, metadata)
    logits = onnx_logits(model_bytes, images.numpy(), threads=0)
    parity = check_parity(logits, reference, labels, tolerance)  # raises, writing nothing, when they disagree
    cost = {
        "ensemble": ms_per_image(model_bytes, images.numpy()),
        "one_member": ms_per_image(export_onnx(build_ensemble(members[:1], False), size, 17, metadata), images.numpy()),
    }
    report = {
        "members": [str(p) for p in paths],
        "shared_cut": ensemble.cut,
        "tta_views": list(ensemble.views),
        "test_images": len(labels),
        "ensemble": {k: v for k, v in measured.items() if k != "metrics"},
        "members_alone": [{k: v for k, v in m.items() if k != "metrics"} for m in alone],
        "parity": parity.as_dict(),
        "ms_per_image_batch8": cost,
        "size_bytes": len(model_bytes),
        "classes": len(split.names),
        "members_trained": [
            {"params": m.meta["params"], **{k: m.meta["training"][k] for k in ("train_seconds", "best_epoch")}}
            for m in members
        ],
        "test": {"labels": encode_labels(labels), "predicted": encode_labels(reference.argmax(1))},
        "seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_write(out / "model.onnx") as handle:
        handle.write(model_bytes)
    write_json(out / "ensemble.json", report)
    return report
