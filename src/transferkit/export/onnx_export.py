"""Export a trained classifier to a self-contained ONNX model and verify it.

The graph takes ``images``: uint8 RGB NCHW at the model's resolution with a dynamic batch axis,
and returns ``logits`` and ``probabilities``. Scaling and normalisation are inside the graph and
the class names and input contract are in ``metadata_props``, so a downstream app needs only
this file, onnxruntime, numpy and Pillow.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from transferkit.errors import ExportError
from transferkit.export.contract import INPUT_NAME, METADATA_PREFIX, OUTPUT_NAMES

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


class _StaticSameConv(nn.Module):
    """A TF-style "same" convolution with its padding fixed for one input size.

    timm's ``Conv2dSame`` computes its padding from the input's shape on every call, which traces
    to about 200 shape-arithmetic nodes in EfficientNet-Lite's graph: overhead on every call, and
    nodes a quantizer must be kept away from. The exported model has one input size (its
    contract), so the pads are constants; the parity check proves the graphs equivalent.
    """

    def __init__(self, conv: nn.Conv2d, pads: list[int]) -> None:
        super().__init__()
        self.conv, self.pads = conv, pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        return nn.functional.conv2d(
            nn.functional.pad(x, self.pads), conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups
        )


def with_static_padding(module: nn.Module, image_size: int) -> nn.Module:
    """A copy of ``module`` whose "same" convolutions pad by constants for ``image_size`` inputs."""
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg

    module = copy.deepcopy(module)
    sizes: dict[str, list[int]] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:  # returns None: inputs unchanged
            sizes[name] = list(args[0].shape[-2:])

        return hook

    hooks = [
        conv.register_forward_pre_hook(record(name))
        for name, conv in module.named_modules()
        if isinstance(conv, Conv2dSame)
    ]
    with torch.no_grad():
        module(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8))
    for hook in hooks:
        hook.remove()
    for name, size in sizes.items():
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        conv = getattr(parent, child)
        setattr(parent, child, _StaticSameConv(conv, pad_same_arg(size, conv.kernel_size, conv.stride, conv.dilation)))
    return module


def trace_to_onnx(module: nn.Module, image_size: int, output_names: list[str], opset: int) -> onnx.ModelProto:
    """Export ``module`` (uint8 NCHW ``images`` in, dynamic batch) with the TorchScript exporter.

    Chosen over the dynamo exporter on measurement (1 s and 2e-6 max error here, against 15 s and
    warnings), so its deprecation notice is silenced here; the parity checks decide either way.
    ``module`` must already be in eval mode: the exporter restores its mode afterwards, recursively.
    """
    buffer = io.BytesIO()
    example = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            with_static_padding(module, image_size),
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=output_names,
            opset_version=opset,
            dynamo=False,
            dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *output_names)},
        )
    return fold_pads_into_convs(onnx.load_from_string(buffer.getvalue()))


def fold_pads_into_convs(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Move each zero-valued spatial ``Pad`` that feeds one ``Conv`` into that Conv's own ``pads``.

    The static "same" padding traces to Pad -> Conv, with the pads behind a Cast that ONNX
    Runtime's Pad fusion does not look through. Unfused, the int8 graph dequantizes, pads in
    float and requantizes the largest activations five times per image; ONNX Conv takes
    asymmetric pads, so the fused graph computes exactly the same thing.
    """
    values = _constant_values(proto)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for pad in [n for n in proto.graph.node if n.op_type == "Pad"]:
        users = consumers.get(pad.output[0], [])
        spatial = _zero_spatial_pads(pad, values)
        if spatial is None or len(users) != 1 or not _unpadded_conv(users[0]):
            continue
        conv = users[0]
        attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute} | {"pads": spatial}
        del conv.attribute[:]
        conv.attribute.extend(helper.make_attribute(name, value) for name, value in sorted(attributes.items()))
        conv.input[0] = pad.input[0]
        proto.graph.node.remove(pad)
    return _without_dead_nodes(proto)


def _constant_values(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of the outputs computed from Constant nodes alone (the exporter's pad arithmetic:
    Concat, Reshape, a reversing Slice, Transpose, Cast), evaluated by ONNX's reference runtime."""
    from onnx.reference import ReferenceEvaluator

    values: dict[str, np.ndarray] = {}
    for node in proto.graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif inputs and all(name in values for name in inputs):
            results = ReferenceEvaluator(node).run(None, {name: values[name] for name in inputs})
            values.update(zip(node.output, results, strict=True))
    return values


def _zero_spatial_pads(pad: onnx.NodeProto, values: dict[str, np.ndarray]) -> list[int] | None:
    """[top, left, bottom, right] of an NCHW Pad that adds zeros on H and W only; None otherwise."""
    pads = values.get(pad.input[1])
    fill = values.get(pad.input[2], np.zeros(1)) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
    mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
    if pads is None or mode != b"constant" or fill.any() or len(pads) != 8 or pads[[0, 1, 4, 5]].any():
        return None
    return [int(p) for p in pads[[2, 3, 6, 7]]]


def _unpadded_conv(node: onnx.NodeProto) -> bool:
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return (
        node.op_type == "Conv"
        and not any(attributes.get("pads", []))
        and attributes.get("auto_pad", b"NOTSET") == b"NOTSET"
    )


def _without_dead_nodes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes none of whose outputs is used (what folding left of the pads' arithmetic)."""
    while True:
        used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
        dead = [node for node in proto.graph.node if not any(name in used for name in node.output)]
        if not dead:
            return proto
        for node in dead:
            proto.graph.node.remove(node)


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
