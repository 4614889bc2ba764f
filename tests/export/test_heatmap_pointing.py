"""The pointing game on the exported ``heatmap``: a trained model's evidence peaks on the mark that decides its class.

Scenes built here: a grey texture (bilinear-smoothed noise plus pixel noise) with two round marks.
A positive scene has a dark mark (the defect, 10-18 px across) and a bright one (14-25 px); a
negative scene has two bright marks. The bright marks make the check fail for the right reason.
With a dark mark alone, a head whose weights are shuffled across feature channels still points at
it: a shuffle keeps the weights' mean, which weighs the total activation at each position (ReLU6
outputs, all >= 0), and the mark is the most active place. Such controls scored anywhere from 0.0
to 0.98 (192 px), the sign of that mean deciding. With a brighter, larger mark beside the dark one,
only a head that learned dark from bright points at the dark mark.

A real linear probe on Lite0's ImageNet features, trained with the project's CPU path (the frozen
trunk through ONNX Runtime, the training loop on the cached features), exported with
``export_onnx`` and run by ONNX Runtime; the peak of the positive class's evidence
(``heatmap.peak``) must be on the dark mark for 90 % of the correctly classified positive scenes.

"On the mark" is its bounding box widened by one feature-map stride (32 px). The map has one cell
per stride, and a mark raises its neighbouring cells' evidence almost as much as its own cell's
(Lite0's last feature map sees far beyond its cell): peaks of marks in a border cell are pulled
one cell inwards, and texture noise decides among neighbours. Widened by half a stride the same
model scored 0.54-0.65, by one stride 0.90-0.96 (data seeds 0-3). The two marks' widened boxes
never overlap, so a peak on a bright mark is a miss.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from transferkit import heatmap
from transferkit.config import TrainParams
from transferkit.contract import HEATMAP_OUTPUT
from transferkit.export.onnx_export import export_onnx
from transferkit.models.classifier import ImageClassifier
from transferkit.training.batches import FeatureBatches
from transferkit.training.compute import Compute
from transferkit.training.feature_cache import compute_features, onnx_trunk, trunk_onnx
from transferkit.training.loop import Trainer

pytestmark = pytest.mark.slow

SIZE = 160
STRIDE = 32  # Lite0's last feature map: 5x5 cells at 160 px
MARGIN = STRIDE
POSITIVE = 1
META = {"class_names": ["clean", "marked"], "image_size": SIZE, "resize": "bilinear"}
TRAIN_PER_CLASS, TEST_PER_CLASS = 300, 50
DARK_RADIUS = (5.0, 9.0)
BRIGHT_SCALE = 1.4  # bright marks are larger, so they are the more salient ones
CONTROL_SEEDS = (0, 1, 2)


def _texture(rng: np.random.Generator) -> np.ndarray:
    """Grey around 140: noise on a 20x20 grid smoothed up to the image (blotches ~8 px) plus pixel noise."""
    coarse = Image.fromarray(rng.normal(0.0, 1.0, (20, 20)).astype(np.float32), mode="F")
    smooth = np.asarray(coarse.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float64)
    return 140 + 25 * smooth / smooth.std() + rng.normal(0.0, 8.0, (SIZE, SIZE))


def _apart(centres: np.ndarray, radii: np.ndarray) -> bool:
    """The marks' boxes, each widened by MARGIN, do not overlap (on one axis at least)."""
    return bool((np.abs(centres[0] - centres[1]) > radii.sum() + 2 * MARGIN).any())


def _scenes(per_class: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (N, 3, SIZE, SIZE) scenes, labels (1: a dark mark), and the dark mark's box (x0, y0, x1, y1).

    The first mark is the dark one in a positive scene; a negative scene's first mark is bright
    and as small as a dark one, so size alone does not tell the classes apart.
    """
    ys, xs = np.mgrid[:SIZE, :SIZE]
    images, labels, boxes = [], [], []
    for label in [0, 1] * per_class:
        pixels = _texture(rng)
        radii = rng.uniform(*DARK_RADIUS, 2) * np.array([1.0, BRIGHT_SCALE])
        centres = rng.uniform(radii[:, None], SIZE - radii[:, None], (2, 2))
        while not _apart(centres, radii):
            centres = rng.uniform(radii[:, None], SIZE - radii[:, None], (2, 2))
        box = np.zeros(4, dtype=int)
        for index, ((cx, cy), radius) in enumerate(zip(centres, radii, strict=True)):
            cover = np.clip(radius + 0.5 - np.hypot(xs - cx, ys - cy), 0.0, 1.0)  # antialiased disc
            if label == 1 and index == 0:
                pixels = pixels * (1 - 0.8 * cover)
                rows, cols = np.nonzero(cover)
                box = np.array([cols.min(), rows.min(), cols.max(), rows.max()])
            else:
                pixels = pixels + 90 * cover
        grey = np.clip(pixels, 0, 255).astype(np.uint8)
        images.append(np.stack([grey] * 3))
        labels.append(label)
        boxes.append(box)
    return np.stack(images), np.array(labels), np.stack(boxes)


def _linear_probe(model: ImageClassifier, images: np.ndarray, labels: np.ndarray) -> ImageClassifier:
    """The project's CPU path for strategy ``linear``: pooled trunk features cached through ONNX
    Runtime, the head trained by the training loop (a fifth held out for its early stopping)."""
    params = TrainParams(strategy="linear", epochs=15, lr=1e-2, batch_size=32, seed=0)
    cut = model.num_units
    features = compute_features(
        onnx_trunk(trunk_onnx(model, cut, SIZE), threads=2), torch.from_numpy(images), (0,), 64, "features"
    )
    targets, held_out = torch.from_numpy(labels), len(labels) // 5
    train = FeatureBatches(features[:, held_out:], targets[held_out:], params.batch_size, params.seed)
    val = FeatureBatches(features[:, :held_out], targets[:held_out], params.batch_size, params.seed)
    trainer = Trainer(model, params, cut, Compute(torch.device("cpu"), "fp32", False), -(-len(train) // 32))
    while not trainer.should_stop():
        trainer.run_epoch(trainer.next_epoch, train, val)
    return trainer.evaluation_model.eval()


def _exported_outputs(model: ImageClassifier, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, heatmap) of ``images`` from ``model`` exported and run by ONNX Runtime."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(export_onnx(model, SIZE, 17, META), options, providers=["CPUExecutionProvider"])
    logits, maps = session.run(["logits", HEATMAP_OUTPUT], {"images": images})
    return logits.argmax(axis=1), maps


def _pointing_score(maps: np.ndarray, boxes: np.ndarray, scenes: np.ndarray) -> float:
    """Share of ``scenes`` whose positive-class evidence peaks within MARGIN of the dark mark's box."""
    hits = []
    for index in scenes:
        x, y = heatmap.peak(heatmap.evidence(maps[index], [POSITIVE]), (SIZE, SIZE))
        x0, y0, x1, y1 = boxes[index]
        hits.append(x0 - MARGIN <= x <= x1 + MARGIN and y0 - MARGIN <= y <= y1 + MARGIN)
    return float(np.mean(hits))


def _shuffled_head(model: ImageClassifier, seed: int) -> ImageClassifier:
    """The same model with the head's weights permuted across feature channels (the same
    permutation for every class): the features, the bias and each class's weight values stay."""
    control = copy.deepcopy(model)
    weight = control.head[-1].weight
    order = torch.randperm(weight.shape[1], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        weight.copy_(weight[:, order])
    return control


def test_trained_heatmap_points_at_the_mark_and_a_shuffled_head_does_not(lite0) -> None:
    rng = np.random.default_rng(0)
    train_images, train_labels, _ = _scenes(TRAIN_PER_CLASS, rng)
    test_images, test_labels, boxes = _scenes(TEST_PER_CLASS, rng)
    model = _linear_probe(lite0, train_images, train_labels)

    predicted, maps = _exported_outputs(model, test_images)
    assert maps.shape == (len(test_images), 2, SIZE // STRIDE, SIZE // STRIDE)
    assert (predicted == test_labels).mean() >= 0.9  # it learned the task, so the scenes below are many
    found = np.flatnonzero((predicted == POSITIVE) & (test_labels == POSITIVE))
    score = _pointing_score(maps, boxes, found)

    # Scored on the same scenes: a shuffled head's own predictions are near chance.
    controls = [
        _pointing_score(_exported_outputs(_shuffled_head(model, seed), test_images)[1], boxes, found)
        for seed in CONTROL_SEEDS
    ]
    print(f"pointing game on {len(found)} scenes: model {score:.3f}, shuffled heads {np.round(controls, 3)}")
    assert score >= 0.9
    assert max(controls) <= 0.6  # each shuffle fails the check, by a wide margin
