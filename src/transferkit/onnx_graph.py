"""Tracing a module to ONNX and the graph surgery after it: shared by training and export.

Training's feature cache runs the frozen units as an ONNX graph (and keys the cache by its
bytes); export traces the whole classifier. Both take uint8 NCHW ``images`` with a dynamic batch
axis and need the same static-padding rewrite, so the tracing lives below both layers.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from transferkit.contract import INPUT_NAME


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
        # Sizes read as plain ints (the class maps' position count) are constants for one input size.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
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


def downstream_nodes(proto: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    """Every node that depends on ``tensor``, directly or not, in graph order."""
    reached, nodes = {tensor}, []
    for node in proto.graph.node:  # ONNX graphs are topologically sorted
        if any(name in reached for name in node.input):
            nodes.append(node)
            reached.update(node.output)
    return nodes


def _without_dead_nodes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Drop nodes none of whose outputs is used (what folding left of the pads' arithmetic)."""
    while True:
        used = {name for node in proto.graph.node for name in node.input} | {o.name for o in proto.graph.output}
        dead = [node for node in proto.graph.node if not any(name in used for name in node.output)]
        if not dead:
            return proto
        for node in dead:
            proto.graph.node.remove(node)
