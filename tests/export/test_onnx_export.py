"""ONNX export: uint8 input, dynamic batch, in-graph normalisation, metadata, parity checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from transferkit.contract import DECISION_OUTPUT, HEATMAP_OUTPUT, OUTPUT_NAMES, read_metadata
from transferkit.decision import DecisionRule
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
    metadata = read_metadata(proto)
    assert {key: metadata[key] for key in META} == META
    assert metadata["outputs"] == [*OUTPUT_NAMES, HEATMAP_OUTPUT]
    assert metadata[HEATMAP_OUTPUT]["shape"] == [2, 2] and metadata[HEATMAP_OUTPUT]["stride"] == 32
    graph_input = proto.graph.input[0]
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in proto.graph.output][:2] == ["logits", "probabilities"]  # the first two, always


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


RULE = DecisionRule(positive=(1,), lower=0.3, upper=0.7, threshold=0.5)


def _outputs(model_bytes: bytes, images: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images}), strict=True))


@pytest.fixture(scope="module")
def with_decision(exported) -> dict[str, bytes]:
    """The same classifier at each precision, with a decision rule and a temperature of 1.5."""
    from transferkit.config import Int8Params
    from transferkit.export.quantize import quantize_int8

    model, _ = exported
    fp32 = export_onnx(model, 64, 17, META, "fp32", 1.5, RULE)
    calibration = np.random.default_rng(5).integers(0, 256, (16, 3, 64, 64), dtype=np.uint8)
    return {
        "fp32": fp32,
        "fp16": export_onnx(model, 64, 17, META, "fp16", 1.5, RULE),
        "int8": quantize_int8(fp32, calibration, Int8Params()),
    }


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_decision_and_heatmap_outputs_follow_the_probabilities(with_decision, precision) -> None:
    """The in-graph decision is the numpy rule on the graph's own probabilities, and the class maps
    sum over positions to the graph's own logits, at every precision."""
    images = np.random.default_rng(3).integers(0, 256, (6, 3, 64, 64), dtype=np.uint8)
    out = _outputs(with_decision[precision], images)
    assert list(out) == [*OUTPUT_NAMES, DECISION_OUTPUT, HEATMAP_OUTPUT]
    decision = read_metadata(onnx.load_from_string(with_decision[precision]))[DECISION_OUTPUT]
    assert DecisionRule.from_metadata(decision, META["class_names"]) == RULE
    assert decision["names"] == ["pass", "flag", "review"]
    assert out[DECISION_OUTPUT].dtype == np.int64 and out[HEATMAP_OUTPUT].dtype == np.float32
    np.testing.assert_array_equal(out[DECISION_OUTPUT], RULE.decide(out["probabilities"]))
    assert out[HEATMAP_OUTPUT].shape == (6, 2, 2, 2)  # Lite0's stride 32 at 64 px
    tolerance = 1e-5 if precision != "int8" else 0.05 * np.abs(out["logits"]).max()
    assert np.abs(out[HEATMAP_OUTPUT].sum((2, 3)) - out["logits"]).max() < tolerance


def test_heatmap_matches_pytorch_class_maps(exported, with_decision) -> None:
    model, _ = exported
    images = np.random.default_rng(4).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    with torch.no_grad():
        logits, maps = model(torch.from_numpy(images)), model.class_maps(model.feature_map(torch.from_numpy(images)))
    np.testing.assert_allclose(maps.sum((2, 3)).numpy(), logits.numpy(), atol=1e-5)  # exact up to rounding
    fp32, fp16 = (_outputs(with_decision[name], images) for name in ("fp32", "fp16"))
    assert np.abs(fp32[HEATMAP_OUTPUT] - maps.numpy() / 1.5).max() < 1e-4
    assert np.abs(fp16[HEATMAP_OUTPUT] - maps.numpy() / 1.5).max() < 0.05


def test_fp16_keeps_the_head_and_the_decision_in_fp32(with_decision) -> None:
    """Only the backbone is converted: the head's weights and everything after them stay fp32."""
    half = onnx.load_from_string(with_decision["fp16"])
    types = {t.name: t.data_type for t in half.graph.initializer}
    gemm = next(node for node in half.graph.node if node.op_type == "Gemm")
    assert types[gemm.input[1]] == onnx.TensorProto.FLOAT
    assert onnx.TensorProto.FLOAT16 in types.values()


def test_new_outputs_use_only_standard_onnx_operators(with_decision) -> None:
    """A downstream app on another ONNX runtime gets the same outputs: no contrib-domain ops."""
    for precision in ("fp32", "fp16"):
        proto = onnx.load_from_string(with_decision[precision])
        assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}


def test_check_decisions_names_the_flips_and_refuses_too_many() -> None:
    from transferkit.export.onnx_export import check_decisions

    rule = DecisionRule((1,), 0.3, 0.7, 0.5)
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.6, 0.4]])
    reference = rule.decide(probabilities)  # pass, review, flag, review
    assert check_decisions(reference, probabilities, rule, 0.0).as_dict()["passed"]
    flipped = reference.copy()
    flipped[1] = 1
    assert check_decisions(flipped, probabilities, rule, 0.25).flips == 1
    with pytest.raises(ExportError, match="decides 1 of 4 test images differently"):
        check_decisions(flipped, probabilities, rule, 0.2)


def test_a_heatmap_that_does_not_add_up_to_the_logits_is_refused() -> None:
    from transferkit.export.onnx_export import check_heatmap

    maps = np.random.default_rng(9).normal(size=(4, 2, 3, 3))
    assert check_heatmap(maps, maps.sum((2, 3)), 1e-4)["max_sum_diff"] < 1e-12
    with pytest.raises(ExportError, match="does not add up to the logits"):
        check_heatmap(maps, maps.sum((2, 3)) + 1e-3, 1e-4)


@pytest.mark.slow
def test_full_size_fp16_export_decides_like_fp32_pytorch(lite0, elpv_subset: Path) -> None:
    """The default architecture at the default 300 px, in fp16, on real cells: the logits within
    the stage's fp16 tolerance and the decisions within export.max_decision_flips of fp32
    PyTorch's (the shrunk 64 px config can't show this: fp16's error grows with the activations
    of a full-size input). The head is a logistic regression on the pooled ImageNet features, so
    the scores spread like a trained model's rather than a random head's."""
    from scipy.special import softmax
    from sklearn.linear_model import LogisticRegression

    from transferkit.config import ExportParams
    from transferkit.export.onnx_export import check_decisions
    from transferkit.preprocessing import load_for_model

    rows = [line.split() for line in (elpv_subset / "labels.csv").read_text().splitlines()]
    images = np.stack([load_for_model(elpv_subset / file, 300, "bilinear") for file, _, _ in rows])
    labels = np.array([float(probability) > 0.5 for _, probability, _ in rows], dtype=np.int64)
    with torch.inference_mode():
        pooled = lite0.feature_map(torch.from_numpy(images)).mean((2, 3)).numpy()
        head = LogisticRegression(C=0.1, max_iter=2000).fit(pooled, labels)
        linear = lite0.head[-1]
        linear.weight.copy_(torch.tensor(np.concatenate([-head.coef_, head.coef_]) / 2))
        linear.bias.copy_(torch.tensor(np.concatenate([-head.intercept_, head.intercept_]) / 2))
        reference = linear(torch.from_numpy(pooled)).double().numpy()  # the head on the pooled features
    probabilities = softmax(reference, axis=1)
    rule = DecisionRule((1,), 0.2, 0.8, 0.35)
    assert 0.1 < (rule.decide(probabilities) == 2).mean() < 0.9  # the band holds cells: there are thresholds to cross
    outputs = _outputs(export_onnx(lite0, 300, 17, {**META, "image_size": 300}, "fp16", 1.0, rule), images)
    params = ExportParams()
    tolerance = max(params.fp16_parity_tolerance, params.fp16_relative_tolerance * np.abs(reference).max())
    assert np.abs(outputs[OUTPUT_NAMES[0]] - reference).max() <= tolerance
    report = check_decisions(outputs[DECISION_OUTPUT], probabilities, rule, params.max_decision_flips)
    assert report.count == len(rows)
