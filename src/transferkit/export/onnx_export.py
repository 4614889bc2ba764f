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
from onnx import helper
from torch import nn

from transferkit.contract import (
    DECISION_OUTPUT,
    EMBEDDING_OUTPUT,
    HEATMAP_OUTPUT,
    METADATA_PREFIX,
    OOD_KEY,
    OOD_OUTPUT,
    OUTPUT_NAMES,
    graph_metadata,
)
from transferkit.decision import DecisionRule
from transferkit.errors import ExportError
from transferkit.models.classifier import ImageClassifier
from transferkit.onnx_graph import downstream_nodes, trace_to_onnx
from transferkit.ood import OodReference

# ONNX Runtime 1.31 loads IR version <= 13 (onnx 1.23 writes 14 by default).
MAX_IR_VERSION = 13


# ood_score in the graph (fp32 matmuls) against numpy's float64 on the same embedding, relative.
OOD_SCORE_TOLERANCE = 1e-3

# An internal output: where the fp16 conversion stops. Removed before the model is written.
FEATURES = "features"


class _OodScore(nn.Module):
    """``ood.OodReference.score`` in torch, for the trace: one MatMul against the stored
    reference, then the nearest class mean (mahalanobis) or the k-th neighbour (knn)."""

    def __init__(self, reference: OodReference) -> None:
        super().__init__()
        self.method, self.k = reference.method, reference.k
        self.register_buffer("matrix", torch.from_numpy(reference.matrix.astype(np.float32)))
        self.register_buffer("centers", torch.from_numpy(reference.centers.astype(np.float32)))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if self.method == "mahalanobis":
            whitened = embedding @ self.matrix
            return (whitened[:, None, :] - self.centers[None]).pow(2).sum(-1).min(dim=1).values
        similarity = nn.functional.normalize(embedding, dim=1, eps=1e-12) @ self.matrix.T
        return 1.0 - similarity.topk(self.k, dim=1).values.min(dim=1).values  # the k-th largest


class _ExportedClassifier(nn.Module):
    """The classifier with its calibration baked in, plus the optional outputs.

    Both ``logits`` and ``probabilities`` are temperature-scaled, so ``softmax(logits) ==
    probabilities`` holds for consumers that compute their own softmax. ``decision`` applies
    ``rule`` to the probabilities (and to ``ood_score``, when the rule has an OOD threshold);
    ``heatmap`` is the class activation maps, scaled like the logits; ``embedding`` is the pooled
    features and ``ood_score`` their distance from ``ood``'s training reference. A model that is
    not an ``ImageClassifier`` (an ensemble) has no single feature map, so it gets none of these.
    The embedding is pooled apart from the head's own pooling so that the OOD nodes hang off
    it alone (int8 keeps exactly those in float).
    """

    def __init__(
        self, model: nn.Module, temperature: float, rule: DecisionRule | None, ood: OodReference | None
    ) -> None:
        super().__init__()
        self.model, self.temperature, self.rule = model, temperature, rule
        self.maps = isinstance(model, ImageClassifier)
        if ood is not None and not self.maps:
            raise ExportError("an OOD score needs a single classifier's embedding; an ensemble has none")
        if (ood is None) != (rule is None or rule.ood_threshold is None):
            raise ExportError("the decision rule's OOD threshold and the OOD reference go together")
        self.ood = None if ood is None else _OodScore(ood)

    @property
    def output_names(self) -> list[str]:
        optional = [DECISION_OUTPUT] * (self.rule is not None) + [HEATMAP_OUTPUT] * self.maps
        optional += [EMBEDDING_OUTPUT, OOD_OUTPUT] * (self.ood is not None) + [FEATURES] * self.maps
        return [*OUTPUT_NAMES, *optional]

    def describe(
        self, image_size: int, class_names: list[str] | None
    ) -> tuple[list[str], dict[str, Any] | None, tuple[int, int] | None]:
        """The outputs as written, the rule as metadata, and the heatmap's (h, w)."""
        shape = None
        if self.maps:
            with torch.no_grad():
                features = self.model.feature_map(torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8))
            shape = (int(features.shape[-2]), int(features.shape[-1]))
        if self.rule is not None and class_names is None:
            raise ExportError("a decision rule needs the class names in the model's metadata")
        decision = None if self.rule is None else self.rule.as_metadata(class_names)
        return [name for name in self.output_names if name != FEATURES], decision, shape

    def _decision(self, probabilities: torch.Tensor, ood_score: torch.Tensor | None) -> torch.Tensor:
        rule = self.rule
        if not rule.positive:
            confidence = probabilities.max(dim=1).values
            codes = torch.where(confidence >= rule.lower, 0, 1)
        else:
            score = probabilities[:, list(rule.positive)].sum(dim=1)
            codes = torch.where(score >= rule.upper, 1, torch.where(score < rule.lower, 0, 2))
        if ood_score is not None:
            codes = torch.where(ood_score > rule.ood_threshold, rule.review_code, codes)
        return codes

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.maps:
            features = self.model.feature_map(images)
            logits = self.model.forward_top(features, self.model.num_units)
        else:
            logits = self.model(images)
        logits = logits / self.temperature
        probabilities = torch.softmax(logits, dim=1)
        outputs = [logits, probabilities]
        embedding = ood_score = None
        if self.ood is not None:
            embedding = self.model.pool(features).flatten(1)
            ood_score = self.ood(embedding)
        if self.rule is not None:
            outputs.append(self._decision(probabilities, ood_score))
        if self.maps:
            outputs.append(self.model.class_maps(features) / self.temperature)
        if self.ood is not None:
            outputs += [embedding, ood_score]
        if self.maps:
            outputs.append(features)
        return tuple(outputs)


def to_fp16(proto: onnx.ModelProto, split: str) -> onnx.ModelProto:
    """fp16 weights and compute up to tensor ``split``, fp32 from there on; uint8 in, fp32 out.

    ``split`` is the last feature map (or, for a model without one, the logits): the backbone,
    where the compute is, runs in fp16, and the head, the temperature, the softmax, the decision
    and the heatmap stay in fp32, so fp16's rounding is not repeated on the logit scale and a
    score near a decision threshold is compared in full precision. onnxconverter-common converts
    the graph with the fp32 part detached, then it is re-attached to the converter's fp32 copy of
    ``split``. Cast nodes (the uint8 input's, and the padding arithmetic of TF-style "same"
    convolutions) stay in fp32 with casts around them: the converter retypes a Cast's output but
    not its ``to`` attribute.
    """
    from onnxconverter_common import float16

    graph = proto.graph
    tail = downstream_nodes(proto, split)
    tail_inputs = {name for node in tail for name in node.input}
    other_inputs = {name for node in graph.node if node not in tail for name in node.input}
    # Constants and weights only the fp32 part reads (the head's, the temperature) stay fp32 with it.
    constants = [n for n in graph.node if n.op_type == "Constant" and n.output[0] in tail_inputs - other_inputs]
    weights = [t for t in graph.initializer if t.name in tail_inputs - other_inputs]
    tail_tensors = {name for node in tail for name in node.output}
    outputs = list(graph.output)
    kept_info = [info for info in graph.value_info if info.name not in tail_tensors]
    for node in constants + tail:
        graph.node.remove(node)
    for weight in weights:
        graph.initializer.remove(weight)
    del graph.output[:]
    graph.output.extend(o for o in outputs if o.name not in tail_tensors)
    if split not in {o.name for o in graph.output}:
        graph.output.append(helper.make_tensor_value_info(split, onnx.TensorProto.FLOAT, None))
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    casts = [n.name for n in graph.node if n.op_type == "Cast"]
    with warnings.catch_warnings():  # one warning per tiny weight clamped to fp16's range; parity decides
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(proto, keep_io_types=True, node_block_list=casts)
    half.graph.initializer.extend(weights)
    half.graph.node.extend(constants + tail)
    del half.graph.output[:]
    half.graph.output.extend(outputs)
    return half


def _without_output(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    kept = [o for o in proto.graph.output if o.name != name]
    del proto.graph.output[:]
    proto.graph.output.extend(kept)
    return proto


def export_onnx(
    model: nn.Module,
    image_size: int,
    opset: int,
    metadata: dict[str, Any],
    precision: str = "fp32",
    temperature: float = 1.0,
    rule: DecisionRule | None = None,
    ood: OodReference | None = None,
) -> bytes:
    """Serialized, checked ONNX model at ``precision`` whose outputs are divided by ``temperature``,
    with a ``decision`` output when ``rule`` is given, a ``heatmap`` for a single classifier and
    ``embedding`` + ``ood_score`` with ``ood`` (then ``rule`` has its OOD threshold); the caller
    verifies it before writing it anywhere. ``model`` maps uint8 images to logits (a classifier,
    or an ensemble of them)."""
    wrapped = _ExportedClassifier(model.cpu(), temperature, rule, ood).eval()
    proto = trace_to_onnx(wrapped, image_size, wrapped.output_names, opset)
    outputs, decision, heatmap_shape = wrapped.describe(image_size, metadata.get("class_names"))
    metadata = {**metadata, **graph_metadata(outputs, decision, heatmap_shape, image_size)}
    if ood is not None:
        metadata[OOD_KEY] = ood.as_metadata()
    if heatmap_shape is not None:  # the tracer leaves the map's spatial dims symbolic; they are fixed
        heatmap = next(o for o in proto.graph.output if o.name == HEATMAP_OUTPUT)
        for dim, size in zip(heatmap.type.tensor_type.shape.dim[2:], heatmap_shape, strict=True):
            dim.dim_value = size
    if precision == "fp16":
        proto = to_fp16(proto, FEATURES if wrapped.maps else OUTPUT_NAMES[0])
    proto = _without_output(proto, FEATURES)
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


@dataclass(frozen=True)
class DecisionReport:
    """The graph's decisions against the rule applied to fp32 PyTorch's calibrated probabilities."""

    flips: int
    count: int
    max_flip_fraction: float

    @property
    def flip_fraction(self) -> float:
        return self.flips / self.count if self.count else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "flip_fraction": self.flip_fraction,
            "passed": self.flip_fraction <= self.max_flip_fraction,
        }


def check_decisions(
    onnx_decisions: np.ndarray,
    reference_probabilities: np.ndarray,
    rule: DecisionRule,
    max_fraction: float,
    reference_ood: np.ndarray | None = None,
) -> DecisionReport:
    """Lower precision moves scores a little; near a threshold that turns pass into flag. At most
    ``max_fraction`` of the test images may decide differently from fp32 PyTorch (its
    probabilities and, with an OOD threshold, its embeddings' ``reference_ood`` scores)."""
    reference = rule.decide(reference_probabilities, reference_ood)
    report = DecisionReport(int((onnx_decisions != reference).sum()), len(reference), max_fraction)
    if report.flip_fraction > max_fraction:
        raise ExportError(
            f"the exported model decides {report.flips} of {report.count} test images differently from fp32 "
            f"PyTorch ({report.flip_fraction:.2%}, more than export.max_decision_flips {max_fraction:.2%}): "
            "its scores sit too close to the thresholds at this precision. The model was not written; "
            "export at a higher precision (export.precision: fp32) or, deliberately, raise export.max_decision_flips."
        )
    return report


def check_heatmap(heatmap: np.ndarray, logits: np.ndarray, tolerance: float) -> dict[str, Any]:
    """The graph's maps must sum over positions to its own logits (which the parity check holds to
    PyTorch's): a map that drifted from the head explains some other model."""
    max_diff = float(np.abs(heatmap.sum(axis=(2, 3)) - logits).max())
    if max_diff > tolerance:
        raise ExportError(
            f"the exported heatmap does not add up to the logits: max |sum - logit| {max_diff:.2e} "
            f"(tolerance {tolerance:.0e}). The model was not written; this is a bug in the exporter, please report it."
        )
    return {"max_sum_diff": max_diff, "tolerance": tolerance, "passed": True}


def check_ood(
    onnx_embedding: np.ndarray,
    onnx_scores: np.ndarray,
    reference_embedding: np.ndarray,
    ood: OodReference,
    tolerance: float,
) -> dict[str, Any]:
    """The graph's embedding against fp32 PyTorch's within ``tolerance`` (the logits' own, scaled
    to the embedding's magnitude), and its ``ood_score`` against the numpy reference on the
    graph's own embedding, relative to the score's range: a score that drifted from its reference
    would send other images to review than the ones validation chose."""
    scale = max(float(np.abs(reference_embedding).max()), 1.0)
    embedding_diff = float(np.abs(onnx_embedding - reference_embedding).max())
    expected = ood.score(onnx_embedding)
    score_diff = float(np.abs(onnx_scores - expected).max() / max(float(np.abs(expected).max()), 1e-6))
    report = {
        "max_embedding_diff": embedding_diff,
        "embedding_tolerance": tolerance * scale,
        "max_relative_score_diff": score_diff,
        "score_tolerance": OOD_SCORE_TOLERANCE,
    }
    if embedding_diff > tolerance * scale or score_diff > OOD_SCORE_TOLERANCE:
        raise ExportError(
            f"the exported embedding or ood_score disagrees with PyTorch: max |embedding diff| {embedding_diff:.2e} "
            f"(tolerance {tolerance * scale:.1e}), max relative ood_score diff {score_diff:.2e} (tolerance "
            f"{OOD_SCORE_TOLERANCE:.0e}). The model was not written; export at fp32 (export.precision) or report a bug."
        )
    return {**report, "passed": True}
