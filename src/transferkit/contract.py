"""The exported model's contract: tensor names and the metadata every consumer reads.

The one place that says which keys an export writes, which a server needs, and which count as
lineage; the exporter, the server, ``transferkit predict`` and the registry all import them from
here. Separate from the exporter so that readers need onnx but not torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

from transferkit import __version__

INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")  # every model has these; a consumer may read only them
# Later outputs, optional for consumers (a model exported before them still serves):
# ``decision``: int64 (batch,), an index into metadata ``decision.names`` (pass / flag / review);
# ``heatmap``: float32 (batch, classes, h, w), class activation maps over the last feature map in
# calibrated-logit units; summed over h and w they give ``logits`` (metadata ``heatmap``).
# ``embedding``: float32 (batch, features), the pooled features the head sees;
# ``ood_score``: float32 (batch,), how far the embedding is from the training split's (metadata
# ``ood``: the method and the threshold above which an image counts as out of distribution; the
# decision then says "review").
DECISION_OUTPUT = "decision"
HEATMAP_OUTPUT = "heatmap"
EMBEDDING_OUTPUT = "embedding"
OOD_OUTPUT = "ood_score"
OOD_KEY = "ood"  # metadata: ood.OodReference.as_metadata (method, threshold, where each was fitted)
# Metadata key: what a server compares its recent traffic with to detect drift, measured on the
# validation split: {"split": "val", "confidence": [...], "ood_score": [...]} (sorted samples; a
# model without an ``ood_score`` output has only ``confidence``).
DRIFT_REFERENCE = "drift_reference"
METADATA_PREFIX = "transferkit."
INPUT_CONTRACT = {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "range": [0, 255]}
# Whatever the weights' precision, the graph takes uint8 images and returns fp32 tensors.
OUTPUT_DTYPE = "float32"

# What a server cannot run the model without.
REQUIRED_METADATA = ("class_names", "image_size", "resize")
# Where the model came from and how good it was: shown by the server's /v1/model.
LINEAGE_KEYS = (
    "architecture",
    "weights",
    "strategy",
    "augment_preset",
    "source",
    "precision",
    "params_hash",
    "data_hash",
    "test_metrics",
)
HEADLINE_METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "roc_auc", "ece", "ece_uncalibrated", "count")


def model_metadata(
    checkpoint_meta: dict[str, Any],
    metrics: dict[str, Any],
    precision: str,
    quantization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything an export writes into ``metadata_props``, from the checkpoint and its test metrics.

    ``quantization`` (int8 only) says how the model was calibrated. The exporter adds what
    describes the graph it traced (``graph_metadata``).
    """
    return {
        **({"quantization": quantization} if quantization else {}),
        "class_names": checkpoint_meta["class_names"],
        "image_size": checkpoint_meta["image_size"],
        "resize": checkpoint_meta["resize"],
        "input": INPUT_CONTRACT,
        "outputs": list(OUTPUT_NAMES),
        "output_dtype": OUTPUT_DTYPE,
        "precision": precision,
        "architecture": checkpoint_meta["architecture"],
        "weights": checkpoint_meta["weights"],
        "strategy": checkpoint_meta["strategy"],
        "augment_preset": checkpoint_meta["augment_preset"],
        # Both outputs are divided by this temperature (fitted on the validation split).
        "calibration": {**checkpoint_meta["calibration"], "outputs": "temperature-scaled"},
        "source": checkpoint_meta["source"],
        "params_hash": checkpoint_meta["params_hash"],
        "data_hash": checkpoint_meta["data_hash"],
        "test_metrics": {key: metrics[key] for key in HEADLINE_METRICS},
        "transferkit_version": __version__,
    }


def graph_metadata(
    outputs: list[str], decision: dict[str, Any] | None, heatmap_shape: tuple[int, int] | None, image_size: int
) -> dict[str, Any]:
    """The keys that describe a traced graph's outputs: their names, the decision rule
    (``decision.DecisionRule.as_metadata``) and what the ``heatmap`` holds, when present."""
    described: dict[str, Any] = {"outputs": outputs}
    if decision is not None:
        described[DECISION_OUTPUT] = decision
    if heatmap_shape is not None:
        height, width = heatmap_shape
        described[HEATMAP_OUTPUT] = {
            "shape": [height, width],
            "stride": image_size / height,  # input pixels per map cell, for drawing it over the image
            "units": "calibrated logit contributed by each position",
            "sums_to": "logits",  # over the last two axes, up to float rounding
        }
    return described


def lineage(metadata: dict[str, Any]) -> dict[str, Any]:
    """The lineage subset of a model's metadata (keys an older export lacks are left out)."""
    return {key: metadata[key] for key in LINEAGE_KEYS if key in metadata}


def read_metadata(proto_or_path: onnx.ModelProto | str | Path) -> dict[str, Any]:
    """The transferkit metadata of an exported model, JSON values decoded."""
    proto = proto_or_path if isinstance(proto_or_path, onnx.ModelProto) else onnx.load(str(proto_or_path))
    decoded = {}
    for entry in proto.metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            try:
                decoded[entry.key[len(METADATA_PREFIX) :]] = json.loads(entry.value)
            except json.JSONDecodeError:
                decoded[entry.key[len(METADATA_PREFIX) :]] = entry.value
    return decoded
