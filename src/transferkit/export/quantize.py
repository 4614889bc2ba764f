"""int8 static quantization of an exported model with ONNX Runtime's own quantization tools.

Calibrated on training images only (never the test split, which then measures the drop). The
graph is first pre-processed (shape inference and ORT's graph optimisations: BatchNorm and
constant folding), then quantized in the QDQ format with per-channel int8 weights and uint8
activations. The uint8 input, the softmax in float and the fp32 outputs keep the model's
contract unchanged for every consumer.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx

from transferkit.config import Int8Params
from transferkit.contract import EMBEDDING_OUTPUT, INPUT_NAME
from transferkit.onnx_graph import downstream_nodes


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over uint8 NCHW images, in batches."""

    def __init__(self, images: np.ndarray, batch_size: int = 16) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def shape_nodes(proto: onnx.ModelProto) -> list[str]:
    """Nodes that compute shapes, not activations: everything fed only by Shape ops and constants.

    TF-style "same" convolutions compute their padding from the input's shape at run time
    (Shape -> Gather -> ... -> Concat -> Pad's pads). Left to the quantizer, those Unsqueeze and
    Concat nodes get quantize/dequantize pairs and the pad amounts come out wrong: measured on
    the default ELPV model, that alone flipped about one prediction in ten.
    """
    constants = {t.name for t in proto.graph.initializer}
    derived: set[str] = set()
    names = []
    for node in proto.graph.node:  # ONNX graphs are topologically sorted
        inputs = [name for name in node.input if name]
        from_shapes = node.op_type == "Shape" or (
            any(name in derived for name in inputs) and all(name in derived or name in constants for name in inputs)
        )
        if node.op_type == "Constant" or from_shapes:
            (derived if from_shapes else constants).update(node.output)
            if from_shapes:
                names.append(node.name)
    return names


def float_nodes(proto: onnx.ModelProto, keep: list[str]) -> list[str]:
    """Nodes that stay in float: always the softmax (its probabilities are the contract, and 8 bits
    do not sum to one), the decision computed from its probabilities (a threshold compared in
    float) and the OOD score computed from the embedding, plus the first convolution and/or the
    classifier head when asked."""
    softmaxes = [n for n in proto.graph.node if n.op_type == "Softmax"]
    names = [n.name for n in softmaxes] + [n.name for s in softmaxes for n in downstream_nodes(proto, s.output[0])]
    # The OOD score: a distance in a whitened 1280-d space, which 8 bits cannot resolve.
    names += [n.name for n in downstream_nodes(proto, EMBEDDING_OUTPUT)]
    if "first_conv" in keep:
        names.append(next(n.name for n in proto.graph.node if n.op_type == "Conv"))
    if "head" in keep:
        names += [n.name for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
    return names


def quantize_int8(model_bytes: bytes, calibration: np.ndarray, settings: Int8Params) -> bytes:
    """The int8 model of ``model_bytes`` (metadata kept), calibrated on ``calibration`` images."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(prefix="transferkit-int8-") as tmp:
        source, prepared, quantized = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        source.write_bytes(model_bytes)
        quant_pre_process(str(source), str(prepared))
        prepared_proto = onnx.load(str(prepared))
        with warnings.catch_warnings():  # ORT's advice to pre-process, which was done above
            warnings.simplefilter("ignore")
            quantize_static(
                str(prepared),
                str(quantized),
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ if settings.format == "qdq" else QuantFormat.QOperator,
                per_channel=settings.per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[settings.calibration_method],
                nodes_to_exclude=shape_nodes(prepared_proto) + float_nodes(prepared_proto, settings.keep_float),
            )
        result = onnx.load(str(quantized))
    original = onnx.load_from_string(model_bytes)
    del result.metadata_props[:]
    result.metadata_props.extend(original.metadata_props)
    result.ir_version = min(result.ir_version, original.ir_version)
    return result.SerializeToString()
