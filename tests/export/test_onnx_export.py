"""ONNX export: uint8 input, dynamic batch, in-graph normalisation, metadata, parity checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from transferkit.contract import read_metadata
from transferkit.errors import ExportError, ModelError
from transferkit.export.onnx_export import MAX_IR_VERSION, check_parity, export_onnx
from transferkit.models.classifier import build_classifier
from transferkit.serving.onnx_model import OnnxClassifier

META = {"class_names": ["functional", "defective"], "image_size": 64, "resize": "bilinear", "data_hash": "abc"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "imagenet", num_classes=2, dropout=0.2).eval()
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    path.write_bytes(export_onnx(model, 64, 17, META))
    return model, path


def test_onnx_model_matches_pytorch_for_any_batch_size(exported) -> None:
    model, path = exported
    classifier = OnnxClassifier(path, device="cpu")
    for batch in (1, 5):
        images = np.random.default_rng(batch).integers(0, 256, (batch, 3, 64, 64), dtype=np.uint8)
        with torch.no_grad():
            expected = model(torch.from_numpy(images)).numpy()
        actual = classifier.logits(images)
        assert actual.shape == (batch, 2)
        assert np.abs(actual - expected).max() < 1e-4


def test_same_padding_is_folded_into_the_convolutions(exported) -> None:
    """No Pad node is left (each forced the int8 graph back to float); the stride-2 convolutions
    carry TF's asymmetric "same" pads themselves, and the parity test above proves them exact."""
    _, path = exported
    graph = onnx.load(str(path)).graph
    assert [node.name for node in graph.node if node.op_type == "Pad"] == []
    pads = [list(a.ints) for node in graph.node if node.op_type == "Conv" for a in node.attribute if a.name == "pads"]
    assert [0, 0, 1, 1] in pads  # top, left, bottom, right of a 3x3 stride-2 conv on an even input
    assert len(graph.node) < 200  # the exporter's pad arithmetic (Concat, Slice, Cast...) is gone too


def test_metadata_and_ir_version_travel_with_the_model(exported) -> None:
    _, path = exported
    proto = onnx.load(str(path))
    assert proto.ir_version <= MAX_IR_VERSION
    assert read_metadata(proto) == META
    graph_input = proto.graph.input[0]
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]


def test_predictions_carry_class_names_and_probabilities(exported) -> None:
    _, path = exported
    predictions = OnnxClassifier(path, device="cpu").predict(np.zeros((2, 3, 64, 64), dtype=np.uint8))
    assert {p.label for p in predictions} <= set(META["class_names"])
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in predictions)


def test_parity_check_fails_loudly() -> None:
    logits = np.array([[1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 1])
    assert check_parity(logits + 1e-6, logits, labels, 1e-4).passed
    with pytest.raises(ExportError, match="disagrees with PyTorch"):
        check_parity(logits + 1e-2, logits, labels, 1e-4)
    with pytest.raises(ExportError, match=r"argmax agreement 0\.5000"):
        check_parity(np.array([[0.0, 1.0], [0.0, 1.0]]), logits, labels, 0.5)


def test_parity_admits_only_flips_of_near_ties() -> None:
    """Every logit within the tolerance: a prediction can flip only where the top two were that close."""
    reference = np.array([[0.50002, 0.49998], [2.0, -2.0]])
    near_tie = np.array([[0.49998, 0.50002], [2.0, -2.0]])
    report = check_parity(near_tie, reference, np.array([0, 0]), 1e-4)
    assert report.passed and report.argmax_agreement == 0.5 and report.onnx_accuracy == 0.5


def test_broken_or_foreign_model_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "broken.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ModelError, match="not a readable ONNX model"):
        OnnxClassifier(tmp_path / "broken.onnx", device="cpu")
    with pytest.raises(ModelError, match="model file not found"):
        OnnxClassifier(tmp_path / "missing.onnx", device="cpu")
    foreign = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ModelError, match="lacks transferkit metadata"):
        OnnxClassifier(tmp_path / "foreign.onnx", device="cpu")


def test_cuda_request_without_a_gpu_never_falls_back_silently(exported) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    _, path = exported
    with pytest.raises(ModelError, match="CUDA"):
        OnnxClassifier(path, device="cuda")


def test_io_binding_path_runs_on_the_cpu_device(exported) -> None:
    """The GPU's IO-binding code, bound to the CPU device: the same answers as a plain run."""
    _, path = exported
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    bound = OnnxClassifier(path, device="cpu", io_binding=True)
    plain = OnnxClassifier(path, device="cpu")
    assert bound.io_binding and not plain.io_binding
    for got, expected in zip(bound.run(images), plain.run(images), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_fp16_export_keeps_the_contract_and_runs_on_the_cpu_provider(exported) -> None:
    model, path = exported
    fp16 = onnx.load_from_string(export_onnx(model, 64, 17, {**META, "precision": "fp16"}, precision="fp16"))
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert {o.type.tensor_type.elem_type for o in fp16.graph.output} == {onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    half_path = path.with_name("model-fp16.onnx")
    onnx.save(fp16, str(half_path))
    images = np.random.default_rng(1).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8)
    full, half = OnnxClassifier(path, device="cpu").run(images), OnnxClassifier(half_path, device="cpu").run(images)
    assert half[0].dtype == np.float32 and half[0].shape == full[0].shape
    assert 0 < np.abs(half[0] - full[0]).max() < 0.05  # fp16 really ran, within the default tolerance
    assert path.stat().st_size > 1.8 * half_path.stat().st_size


def test_int8_leaves_the_padding_arithmetic_alone(exported) -> None:
    """TF-style "same" padding is computed from shapes at run time; quantizing it breaks the pads."""
    from transferkit.config import Int8Params
    from transferkit.export.quantize import quantize_int8

    _, path = exported
    calibration = np.random.default_rng(2).integers(0, 256, (16, 3, 64, 64), dtype=np.uint8)
    quantized = onnx.load_from_string(quantize_int8(path.read_bytes(), calibration, Int8Params()))
    producers = {output: node.op_type for node in quantized.graph.node for output in node.output}
    quantized_tensors = {node.input[0] for node in quantized.graph.node if node.op_type == "QuantizeLinear"}
    assert {producers.get(t) for t in quantized_tensors} & {"Concat", "Unsqueeze", "Gather", "Shape"} == set()
    assert any(node.op_type == "QuantizeLinear" for node in quantized.graph.node)
    assert read_metadata(quantized) == read_metadata(onnx.load(str(path)))  # the contract travels along


def test_accuracy_drop_rule_names_the_drop() -> None:
    from transferkit.export.onnx_export import check_accuracy_drop

    reference = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 1, 0, 1])
    flipped = reference.copy()
    flipped[0] = [0.0, 2.0]
    assert check_accuracy_drop(reference + 0.3, reference, labels, 0.0).passed
    with pytest.raises(ExportError, match=r"loses 25\.00 points .* 0\.1"):
        check_accuracy_drop(flipped, reference, labels, 0.1)
