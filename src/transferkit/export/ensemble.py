"""An ensemble of trained tops on one shared frozen trunk, with optional test-time augmentation,
as one module that exports to one ONNX graph (measured on the test split by study/ensemble.py).

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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit.errors import ModelError
from transferkit.inference import run_batched
from transferkit.training.augment import preset_named
from transferkit.training.checkpoint import checkpoint_temperature, load_checkpoint, model_from_checkpoint
from transferkit.views import apply_view

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
    views = preset_named(members[0].meta["augment_preset"]).views if tta else (0,)
    temperatures = [checkpoint_temperature(member.payload) for member in members]
    return SharedTrunkEnsemble(models, temperatures, cut, views).eval()


def member_logits(ensemble: SharedTrunkEnsemble, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Uncalibrated logits of every member on every view of ``images``: (members, views, N, classes)."""
    with torch.no_grad():
        return run_batched(ensemble.member_logits, images, batch_size, axis=2).numpy()
