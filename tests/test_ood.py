"""The OOD score: its numpy reference against textbook implementations, and the exported graph's
``embedding`` / ``ood_score`` against PyTorch and numpy at every precision, with the decision
sending images over the threshold to review."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf
from sklearn.neighbors import NearestNeighbors

from tests.helpers import CLASSES, IMAGE_SIZE, RULE
from transferkit.config import Int8Params
from transferkit.contract import DECISION_OUTPUT, EMBEDDING_OUTPUT, OOD_KEY, OOD_OUTPUT, read_metadata
from transferkit.decision import NEAR_THRESHOLD, OUT_OF_DISTRIBUTION, DecisionRule
from transferkit.errors import ExportError
from transferkit.export.onnx_export import export_onnx
from transferkit.export.quantize import quantize_int8
from transferkit.inference import onnx_outputs
from transferkit.models.classifier import build_classifier
from transferkit.ood import detection_metrics, fit_reference

RNG = np.random.default_rng(0)


def clusters(count: int, dims: int = 12) -> tuple[np.ndarray, np.ndarray]:
    labels = RNG.integers(0, 3, count)
    centres = RNG.normal(0, 3, (3, dims))
    mixing = RNG.normal(0, 1, (dims, dims))
    return centres[labels] + RNG.normal(0, 1, (count, dims)) @ mixing, labels


def test_mahalanobis_is_the_distance_to_the_nearest_class_mean_under_the_shared_covariance() -> None:
    embeddings, labels = clusters(400)
    reference = fit_reference("mahalanobis", embeddings, labels, k=0, bank_size=0, seed=0)
    means = [embeddings[labels == c].mean(0) for c in range(3)]
    precision = LedoitWolf(assume_centered=True).fit(embeddings - np.stack(means)[labels]).precision_
    queries = RNG.normal(0, 4, (20, embeddings.shape[1]))
    expected = [min(mahalanobis(q, m, precision) ** 2 for m in means) for q in queries]
    np.testing.assert_allclose(reference.score(queries), expected, rtol=1e-6)


def test_knn_is_one_minus_the_kth_cosine_similarity() -> None:
    embeddings, labels = clusters(300)
    reference = fit_reference("knn", embeddings, labels, k=5, bank_size=200, seed=0)
    assert reference.matrix.shape == (200, embeddings.shape[1])  # the bank is capped
    neighbours = NearestNeighbors(n_neighbors=5, metric="cosine").fit(reference.matrix)
    queries = RNG.normal(0, 4, (20, embeddings.shape[1]))
    distances, _ = neighbours.kneighbors(queries)
    np.testing.assert_allclose(reference.score(queries), distances[:, -1], atol=1e-9)


def test_threshold_keeps_the_asked_share_of_validation_below_it_and_far_points_score_above() -> None:
    embeddings, labels = clusters(600)
    for method in ("mahalanobis", "knn"):
        reference = fit_reference(method, embeddings[:400], labels[:400], k=10, bank_size=1000, seed=0)
        val_scores = reference.score(embeddings[400:])
        reference = reference.with_threshold(val_scores, 0.9)
        assert (val_scores <= reference.threshold).mean() == pytest.approx(0.9, abs=0.01)
        far = embeddings[400:] * -3 + 20
        figures = detection_metrics(val_scores, reference.score(far), reference.threshold)
        assert figures["auroc"] > 0.99 and figures["shifted_flagged"] > 0.95, (method, figures)


@pytest.fixture(scope="module")
def model_and_images(cells) -> tuple[torch.nn.Module, np.ndarray]:
    torch.manual_seed(0)
    model = build_classifier("efficientnet_lite0", "imagenet", num_classes=len(CLASSES), dropout=0.2).eval()
    real = np.stack(
        [np.asarray(Image.open(c).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE))).transpose(2, 0, 1) for c in cells]
    )
    noise = np.random.default_rng(1).integers(0, 256, (4, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    return model, np.concatenate([real, noise]).astype(np.uint8)


def embed(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.pool(model.feature_map(torch.from_numpy(images))).flatten(1).numpy().astype(np.float64)


@pytest.mark.parametrize("method", ["mahalanobis", "knn"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_exported_ood_score_matches_its_reference_and_decides_review(model_and_images, method, precision) -> None:
    model, images = model_and_images
    embeddings = embed(model, images)
    labels = np.arange(len(images)) % 2
    reference = fit_reference(method, embeddings[:8], labels[:8], k=3, bank_size=64, seed=0)
    scores = reference.score(embeddings)
    reference = replace(reference, threshold=float(np.median(scores)))  # half the images over it
    rule = replace(RULE, ood_threshold=reference.threshold)
    meta = {"class_names": CLASSES, "image_size": IMAGE_SIZE}
    traced = "fp16" if precision == "fp16" else "fp32"
    model_bytes = export_onnx(model, IMAGE_SIZE, 17, meta, traced, rule=rule, ood=reference)
    if precision == "int8":
        model_bytes = quantize_int8(model_bytes, images, Int8Params(calibration_images=8))
    outputs = onnx_outputs(model_bytes, images, ["probabilities", DECISION_OUTPUT, EMBEDDING_OUTPUT, OOD_OUTPUT])
    graph_embedding, graph_scores = outputs[EMBEDDING_OUTPUT], outputs[OOD_OUTPUT]
    # The graph's score is the reference's on the graph's own embedding, at every precision.
    np.testing.assert_allclose(graph_scores, reference.score(graph_embedding), rtol=1e-3, atol=1e-4)
    if precision == "fp32":
        np.testing.assert_allclose(graph_embedding, embeddings, atol=1e-4)
    # The decision is the rule's numpy twin on the graph's own probabilities and scores.
    decisions = outputs[DECISION_OUTPUT]
    np.testing.assert_array_equal(decisions, rule.decide(outputs["probabilities"], graph_scores))
    over = graph_scores > reference.threshold
    assert over.any() and (decisions[over] == rule.review_code).all()
    reasons = rule.reasons(decisions, graph_scores)
    assert {reasons[i] for i in np.flatnonzero(over)} == {OUT_OF_DISTRIBUTION}
    assert {r for r, o in zip(reasons, over, strict=True) if not o} <= {None, NEAR_THRESHOLD}
    metadata = read_metadata(onnx.load_from_string(model_bytes))
    assert metadata[OOD_KEY]["method"] == method and metadata[OOD_KEY]["threshold"] == reference.threshold
    assert metadata[DECISION_OUTPUT]["out_of_distribution"]["above"] == reference.threshold
    assert DecisionRule.from_metadata(metadata[DECISION_OUTPUT], CLASSES) == rule


def test_ood_reference_and_rule_threshold_go_together(model_and_images) -> None:
    model, images = model_and_images
    reference = fit_reference("knn", embed(model, images), np.zeros(len(images), int), k=1, bank_size=64, seed=0)
    meta = {"class_names": CLASSES, "image_size": IMAGE_SIZE}
    with pytest.raises(ExportError, match="go together"):
        export_onnx(model, IMAGE_SIZE, 17, meta, rule=RULE, ood=reference)
