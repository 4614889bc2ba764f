"""Where and how the network computes: device, precision and memory format, resolved once.

Every branch that differs on CUDA is a setting here, and each has a CPU twin that runs the same
code: CPU autocast supports bf16 and PyTorch's CPU convolutions take channels_last, so CI runs
``precision: bf16`` and ``memory_format: channels_last`` end to end without a GPU. Train,
evaluate and the feature cache all compute through this one object.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from transferkit.config import TrainParams
from transferkit.errors import ConfigError

Precision = Literal["fp32", "bf16"]


def resolve_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: Precision
    channels_last: bool

    @classmethod
    def from_params(cls, train: TrainParams) -> Compute:
        """``auto`` means bf16 and channels_last on CUDA, fp32 and contiguous on the CPU."""
        device = resolve_device(train.device)
        on_cuda = device.type == "cuda"
        precision: Precision = ("bf16" if on_cuda else "fp32") if train.precision == "auto" else train.precision
        channels_last = on_cuda if train.memory_format == "auto" else train.memory_format == "channels_last"
        return cls(device, precision, channels_last)

    @property
    def fp32(self) -> Compute:
        """The same device and layout in full precision (the export's parity reference)."""
        return Compute(self.device, "fp32", self.channels_last)

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    @contextlib.contextmanager
    def exact(self) -> Iterator[None]:
        """fp32 that means fp32: CUDA's TF32 convolutions and matmuls are off inside (no-op on CPU)."""
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

    def place_model(self, model: nn.Module) -> nn.Module:
        model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device; 4-D inputs in the chosen memory format."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 and self.channels_last else x

    def describe(self) -> dict[str, str | bool]:
        """What metrics and checkpoints record about how a number was computed."""
        return {"device": self.device.type, "precision": self.precision, "channels_last": self.channels_last}
