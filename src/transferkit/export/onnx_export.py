"""Export a trained classifier to a self-contained ONNX model and verify it.

The graph takes ``images``: uint8 RGB NCHW at the model's resolution with a dynamic batch axis,
and returns ``logits`` and ``probabilities``. Scaling and normalisation are inside the graph and
the class names and input contract are in ``metadata_props``, so a downstream app needs only
this file, onnxruntime, numpy and Pillow.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from transferkit.contract import METADATA_PREFIX, OUTPUT_NAMES
from transferkit.errors import ExportError
from transferkit.onnx_graph import trace_to_onnx

# ONNX Runtime 1.31 loads IR version <= 13 (onnx 1.23 writes 14 by default).
MAX_IR_VERSION = 13


class _ExportedClassifier(nn.Module):
    """The classifier with its calibration baked in: both outputs are temperature-scaled, so
    ``softmax(logits) == probabilities`` holds for consumers that compute their own softmax."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(images)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return logits, torch.softmax(logits, dim=1)


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and compute with the contract kept: uint8 ``images`` in, fp32 outputs out.

    onnxconverter-common converts the network up to the logits; the softmax is detached first
    and re-attached in fp32 on the fp32 logits (the converter mishandles a graph output that also
    feeds a node). Cast nodes (the uint8 input's, and the padding arithmetic of TF-style "same"
    convolutions) stay in fp32 with casts around them: the converter retypes a Cast's output but
    not its ``to`` attribute.
    """
    from onnxconverter_common import float16

    graph = proto.graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax" and n.output[0] == OUTPUT_NAMES[1])
    probabilities = next(o for o in graph.output if o.name == OUTPUT_NAMES[1])
    graph.node.remove(softmax)
    graph.output.remove(probabilities)
    casts = [n.name for n in graph.node if n.op_type == "Cast"]
    with warnings.catch_warnings():  # one warning per tiny weight clamped to fp16's range; parity decides
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(proto, keep_io_types=True, node_block_list=casts)
    half.graph.node.append(softmax)
    half.graph.output.append(probabilities)
    return half


def export_onnx(
    model: nn.Module,
    image_size: int,
    opset: int,
    metadata: dict[str, Any],
    precision: str = "fp32",
    temperature: float = 1.0,
) -> bytes:
    """Serialized, checked ONNX model at ``precision`` whose outputs are divided by ``temperature``;
    the caller verifies it before writing it anywhere. ``model`` maps uint8 images to logits (a
    classifier, or an ensemble of them)."""
    wrapped = _ExportedClassifier(model.cpu(), temperature).eval()
    proto = trace_to_onnx(wrapped, image_size, list(OUTPUT_NAMES), opset)
    if precision == "fp16":
        proto = to_fp16(proto)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    proto.producer_name = "transferkit"
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = METADATA_PREFIX + key
        entry.value = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


@dataclass(frozen=True)
class Verification:
    """What every export check reports: agreement with PyTorch and both test accuracies."""

    argmax_agreement: float
    onnx_accuracy: float
    torch_accuracy: float
    count: int

    @property
    def passed(self) -> bool:
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


@dataclass(frozen=True)
class ParityReport(Verification):
    """fp32 / fp16 against fp32 PyTorch: every logit within the tolerance."""

    max_abs_diff: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


@dataclass(frozen=True)
class QuantizedReport(Verification):
    """int8 against fp32 PyTorch: logits may differ, predictions must stay as accurate."""

    accuracy_drop: float
    macro_f1_drop: float
    max_probability_diff: float
    max_accuracy_drop: float

    @property
    def passed(self) -> bool:
        return self.accuracy_drop <= self.max_accuracy_drop


def check_accuracy_drop(
    onnx_logits: np.ndarray, torch_logits: np.ndarray, labels: np.ndarray, max_drop: float
) -> QuantizedReport:
    """A quantized model on the test images: accuracy may drop by at most ``max_drop``."""
    from scipy.special import softmax
    from sklearn.metrics import f1_score

    onnx_pred, torch_pred = onnx_logits.argmax(1), torch_logits.argmax(1)
    onnx_accuracy, torch_accuracy = float((onnx_pred == labels).mean()), float((torch_pred == labels).mean())
    report = QuantizedReport(
        argmax_agreement=float((onnx_pred == torch_pred).mean()),
        onnx_accuracy=onnx_accuracy,
        torch_accuracy=torch_accuracy,
        accuracy_drop=torch_accuracy - onnx_accuracy,
        macro_f1_drop=float(
            f1_score(labels, torch_pred, average="macro", zero_division=0)
            - f1_score(labels, onnx_pred, average="macro", zero_division=0)
        ),
        max_probability_diff=float(np.abs(softmax(onnx_logits, axis=1) - softmax(torch_logits, axis=1)).max()),
        max_accuracy_drop=max_drop,
        count=len(labels),
    )
    if not report.passed:
        raise ExportError(
            f"the int8 model loses {report.accuracy_drop * 100:.2f} points of test accuracy "
            f"({report.onnx_accuracy:.4f} vs fp32 {report.torch_accuracy:.4f}), more than "
            f"export.max_accuracy_drop {max_drop}. The model was not written; try export.int8.calibration_method, "
            "export.int8.keep_float or more export.int8.calibration_images, or export.precision: fp32."
        )
    return report


def check_parity(
    onnx_logits: np.ndarray, torch_logits: np.ndarray, labels: np.ndarray, tolerance: float
) -> ParityReport:
    """ONNX Runtime against the fp32 PyTorch reference: every logit within ``tolerance``.

    That bound is also the rule for predictions: with every logit off by at most ``tolerance``, a
    prediction can only flip where the reference's top two logits lie within twice the tolerance
    (a near-tie). At fp32's 1e-4 that means identical predictions in practice; at fp16's tolerance
    it admits honest near-ties, which the report counts (argmax agreement, both accuracies).
    """
    report = ParityReport(
        max_abs_diff=float(np.abs(onnx_logits - torch_logits).max()),
        argmax_agreement=float((onnx_logits.argmax(1) == torch_logits.argmax(1)).mean()),
        onnx_accuracy=float((onnx_logits.argmax(1) == labels).mean()),
        torch_accuracy=float((torch_logits.argmax(1) == labels).mean()),
        tolerance=tolerance,
        count=len(labels),
    )
    if not report.passed:
        raise ExportError(
            "ONNX model disagrees with PyTorch on the test images: "
            f"max |diff| {report.max_abs_diff:.2e} (tolerance {tolerance:.0e}), argmax agreement "
            f"{report.argmax_agreement:.4f}, accuracy ONNX {report.onnx_accuracy:.4f} vs PyTorch "
            f"{report.torch_accuracy:.4f}. The model was not written; try export.opset (or, for fp16, "
            "export.precision: fp32) or report a bug."
        )
    return report
