"""export: ONNX model with in-graph preprocessing and metadata, verified before it is written.

The exported graph runs in ONNX Runtime on every test image and must match the exact fp32
PyTorch logits that evaluate saved (whatever precision evaluation ran at) within
``export.parity_tolerance`` (for an fp16 export, ``export.fp16_parity_tolerance`` or
``export.fp16_relative_tolerance`` of the largest reference logit, whichever is larger); only then
are model.onnx and its model card renamed into place, so a failed check leaves the previous
export untouched. fp16 models run on the CPU provider too, which is how CI verifies them. An
int8 model (static quantization calibrated on training images) is held to
``export.max_accuracy_drop`` of test accuracy instead of a logit tolerance. The decision rule
evaluate chose travels in the graph (``decision`` output and metadata); at every precision at
most ``export.max_decision_flips`` (int8: ``export.int8.max_decision_flips``) of the test images
may decide differently from the rule on fp32 PyTorch's probabilities, and (fp32, fp16) the
heatmap must sum to the graph's logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from scipy.special import softmax

from transferkit.config import Params
from transferkit.contract import (
    DECISION_OUTPUT,
    DRIFT_REFERENCE,
    EMBEDDING_OUTPUT,
    HEATMAP_OUTPUT,
    OOD_OUTPUT,
    OUTPUT_NAMES,
    model_metadata,
    read_metadata,
)
from transferkit.data.cache import PreparedData
from transferkit.decision import DecisionRule
from transferkit.evaluation.operating_point import decision_figures
from transferkit.export.model_card import render_model_card
from transferkit.export.onnx_export import (
    ParityReport,
    QuantizedReport,
    check_accuracy_drop,
    check_decisions,
    check_heatmap,
    check_ood,
    check_parity,
    export_onnx,
)
from transferkit.export.quantize import quantize_int8
from transferkit.inference import onnx_outputs
from transferkit.io import atomic_write, read_json, write_json, write_text
from transferkit.ood import OodReference
from transferkit.stages.common import ERRORS_PNG, RELIABILITY_PNG, configure_threads, console, main
from transferkit.training.checkpoint import MODEL, checkpoint_temperature, load_checkpoint, model_from_checkpoint


def calibration_indices(prepared: PreparedData, params: Params) -> np.ndarray:
    """A seeded sample of the training split: what int8 calibrates on (never the test split)."""
    train = prepared.indices("train")
    count = min(params.export.int8.calibration_images, len(train))
    return np.sort(np.random.default_rng(params.data.seed).choice(train, count, replace=False))


def build_model(
    params: Params,
    payload: dict[str, Any],
    prepared: PreparedData,
    metadata: dict[str, Any],
    calibration: np.ndarray | None,
    rule: DecisionRule | None,
    ood: OodReference | None,
) -> bytes:
    """The ONNX model at ``export.precision``: traced fp32 (or fp16), or fp32 quantized to int8
    on the ``calibration`` indices."""
    traced = "fp16" if params.export.precision == "fp16" else "fp32"
    model = export_onnx(
        model_from_checkpoint(payload),
        prepared.image_size,
        params.export.opset,
        metadata,
        traced,
        checkpoint_temperature(payload),
        rule,
        ood,
    )
    if calibration is not None:
        model = quantize_int8(model, prepared.images_chw(calibration).numpy(), params.export.int8)
    return model


def verify(
    params: Params,
    model_bytes: bytes,
    prepared: PreparedData,
    threads: int,
    rule: DecisionRule | None,
    ood: OodReference | None,
) -> tuple[ParityReport | QuantizedReport, dict[str, dict[str, Any]]]:
    """Every test image through ONNX Runtime against the fp32 PyTorch logits (and embeddings)
    evaluate saved: the logits (or, for int8, the accuracy), the heatmap's sums, the embedding and
    OOD score, and the decisions; returns the logit check and the others' reports by output."""
    test_idx = prepared.indices("test")
    names = [*OUTPUT_NAMES, HEATMAP_OUTPUT] + ([DECISION_OUTPUT] if rule is not None else [])
    names += [EMBEDDING_OUTPUT, OOD_OUTPUT] if ood is not None else []
    outputs = onnx_outputs(model_bytes, prepared.images_chw(test_idx).numpy(), names, threads)
    reference_embedding = None if ood is None else np.load(params.paths.test_embeddings)
    reference_ood = None if ood is None else ood.score(reference_embedding)
    logits = outputs[OUTPUT_NAMES[0]]
    reference, labels = np.load(params.paths.test_logits), prepared.labels(test_idx)
    export = params.export
    others: dict[str, dict[str, Any]] = {}
    if export.precision == "int8":  # quantized maps are not held to a float tolerance, like the logits
        check: ParityReport | QuantizedReport = check_accuracy_drop(logits, reference, labels, export.max_accuracy_drop)
    else:
        tolerance = export.parity_tolerance
        if export.precision == "fp16":
            largest = float(np.abs(reference).max())
            tolerance = max(export.fp16_parity_tolerance, export.fp16_relative_tolerance * largest)
        check = check_parity(logits, reference, labels, tolerance)
        others[HEATMAP_OUTPUT] = check_heatmap(outputs[HEATMAP_OUTPUT], logits, tolerance)
        if ood is not None:
            graph = outputs[EMBEDDING_OUTPUT], outputs[OOD_OUTPUT]
            others[OOD_OUTPUT] = check_ood(*graph, reference_embedding, ood, tolerance)
    if rule is not None:
        probabilities = softmax(reference.astype(np.float64), axis=1)
        limit = export.int8.max_decision_flips if export.precision == "int8" else export.max_decision_flips
        flips = check_decisions(outputs[DECISION_OUTPUT], probabilities, rule, limit, reference_ood)
        # What the line gets from this model at this precision, as evaluate measured fp32's.
        own = decision_figures(rule, outputs[OUTPUT_NAMES[1]].astype(np.float64), labels)
        others[DECISION_OUTPUT] = {**flips.as_dict(), "test": own}
    return check, others


def run(params: Params) -> dict[str, Any]:
    threads = configure_threads(params.train.num_threads)
    prepared = PreparedData.load(params.paths.prepared)
    payload = load_checkpoint(Path(params.paths.train) / MODEL)
    metrics = read_json(Path(params.paths.evaluate) / "metrics.json")
    precision = params.export.precision
    calibration = calibration_indices(prepared, params) if precision == "int8" else None
    quantization = (
        None
        if calibration is None
        else {
            **params.export.int8.model_dump(mode="json"),
            "calibration_split": "train",
            "calibration_images": len(calibration),
        }
    )
    metadata = model_metadata(payload["meta"], metrics, precision, quantization)
    # Metrics written before the operating point existed have no rule: the model gets no decision.
    rule = (
        DecisionRule.from_metadata(metrics["decision"]["rule"], prepared.class_names) if "decision" in metrics else None
    )
    # Evaluate fitted an OOD reference when its rule has an OOD threshold (decision.ood.method).
    ood = None if rule is None or rule.ood_threshold is None else OodReference.load(params.paths.ood_reference)
    if Path(params.paths.drift_reference).is_file():
        metadata[DRIFT_REFERENCE] = read_json(params.paths.drift_reference)
    model_bytes = build_model(params, payload, prepared, metadata, calibration, rule, ood)
    check, others = verify(params, model_bytes, prepared, threads, rule, ood)

    out = Path(params.paths.export)
    with atomic_write(out / "model.onnx") as handle:
        handle.write(model_bytes)
    gallery = ERRORS_PNG if (Path(params.paths.evaluate) / ERRORS_PNG).is_file() else None
    written = read_metadata(onnx.load_from_string(model_bytes))  # with what the exporter added about the graph
    card = render_model_card(written, metrics, check.as_dict(), RELIABILITY_PNG, gallery)
    write_text(out / "model_card.md", card)
    for figure in (RELIABILITY_PNG, gallery):
        if figure is not None:
            with atomic_write(out / figure) as handle:
                handle.write((Path(params.paths.evaluate) / figure).read_bytes())
    report = {
        "parity": check.as_dict(),
        **others,
        "precision": precision,
        "size_bytes": len(model_bytes),
        "model": str(out / "model.onnx"),
    }
    write_json(params.paths.export_report, report)
    console.print(
        f"exported {out / 'model.onnx'} ({precision}, {len(model_bytes) / 1e6:.1f} MB): "
        + (
            f"test accuracy drop vs PyTorch fp32 {check.accuracy_drop * 100:.2f} points"
            if isinstance(check, QuantizedReport)
            else f"max |diff| vs PyTorch {check.max_abs_diff:.2e}"
        )
        + f", argmax agreement {check.argmax_agreement:.4f}"
        + (
            f", {others[DECISION_OUTPUT]['flips']} of {others[DECISION_OUTPUT]['count']} decisions differ"
            if DECISION_OUTPUT in others
            else ""
        ),
        highlight=False,
    )
    return report


if __name__ == "__main__":
    main(run)
