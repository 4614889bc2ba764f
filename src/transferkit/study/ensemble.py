"""Build, verify and measure an ensemble of trained models on the test split: a recipe try.

The graph itself (one shared trunk, averaged tops, optional test-time augmentation) is
export/ensemble.py's; this module measures it like a study cell (bootstrap intervals, test
predictions, inference cost against one member) so ``transferkit recipes`` can list it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.config import parse_params
from transferkit.contract import INPUT_NAME, model_metadata
from transferkit.data.cache import PreparedData
from transferkit.errors import ModelError
from transferkit.evaluation.metrics import classification_metrics, expected_calibration_error, softmax
from transferkit.export.ensemble import Member, build_ensemble, load_members, member_logits
from transferkit.export.onnx_export import check_parity, export_onnx
from transferkit.inference import onnx_logits
from transferkit.io import atomic_write, write_json
from transferkit.onnx_runtime import CPU, create_session
from transferkit.study import stats
from transferkit.study.store import encode_labels, identity, load_records, ran_with


def ms_per_image(model_bytes: bytes, images: np.ndarray, batch_size: int = 8, rounds: int = 5) -> float:
    """ONNX Runtime milliseconds per image at ``batch_size`` on this machine (after one warm-up call)."""
    session, batch = create_session(model_bytes, [CPU]), images[:batch_size]
    session.run(None, {INPUT_NAME: batch})
    started = time.perf_counter()
    for _ in range(rounds):
        session.run(None, {INPUT_NAME: batch})
    return round(1000 * (time.perf_counter() - started) / (rounds * len(batch)), 2)


@dataclass(frozen=True)
class TestSplit:
    labels: np.ndarray
    groups: list[str]
    names: list[str]
    bins: int


def headline(logits: np.ndarray, raw: np.ndarray, test: TestSplit) -> dict[str, Any]:
    """Test metrics of calibrated ``logits`` (``raw``: the same before temperature scaling), with
    95 % bootstrap intervals over the test images for accuracy and macro-F1."""
    labels, names = test.labels, test.names
    metrics = classification_metrics(logits, labels, test.groups, names, test.bins)
    metrics["ece_uncalibrated"] = expected_calibration_error(softmax(raw), labels, test.bins)
    intervals = stats.headline_intervals(labels, [logits.argmax(1)], len(names))
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], **intervals, "metrics": metrics}


TRAINED_SECTIONS = ("data", "model", "train")


def members_trained(members: list[Member], store: Path) -> list[dict[str, Any]]:
    """Each member's params, best epoch and training time, the time from its study record in ``store``.

    A checkpoint carries no wall-clock time (a rerun must reproduce it byte for byte), so the cost
    of a member comes from the record its study cell left; a member that no record matches gets
    ``train_seconds: None`` (``transferkit ensemble --record`` refuses such an ensemble).
    """
    records = load_records(store)
    trained = []
    for member in members:
        wanted = identity(parse_params(member.meta["params"]))
        match = next(
            (r for r in records if all(ran_with(r)[k] == wanted[k] for k in TRAINED_SECTIONS)),
            None,
        )
        seconds = None if match is None else match["training"]["train_seconds"]
        trained.append(
            {
                "params": member.meta["params"],
                "train_seconds": seconds,
                "best_epoch": member.meta["training"]["best_epoch"],
            }
        )
    return trained


def run_ensemble(
    paths: list[Path], prepared_root: Path, out: Path, tta: bool, tolerance: float, bins: int, store: Path
) -> dict[str, Any]:
    """Build, verify and measure the ensemble of ``paths``; write ``model.onnx`` and ``ensemble.json`` to ``out``.

    The report keeps what the recipe table needs to list the ensemble as a try (``transferkit
    recipes``): each member's params and training cost (from the study records in ``store``), and
    the ensemble's test predictions.
    """
    started = time.perf_counter()
    members = load_members(paths)
    prepared = PreparedData.load(prepared_root)
    test = prepared.indices("test")
    images, labels, size = prepared.images_chw(test), prepared.labels(test), prepared.image_size
    split = TestSplit(labels, prepared.groups(test), prepared.class_names, bins)
    if members[0].meta["image_size"] != size or members[0].meta["class_names"] != split.names:
        raise ModelError(f"the models were trained on other prepared data than {prepared_root}; pass the right one")

    ensemble = build_ensemble(members, tta)
    raw = member_logits(ensemble, images)  # one pass: the trunk once, every top, every view
    temperatures = ensemble.temperatures.numpy()
    reference = (raw / temperatures).mean((0, 1))
    alone = [headline(raw[m, 0] / temperatures[m, 0], raw[m, 0], split) for m in range(len(members))]
    measured = headline(reference, raw.mean((0, 1)), split)
    metadata = model_metadata(members[0].meta, measured["metrics"], "fp32") | {
        "ensemble": {"members": [str(p) for p in paths], "shared_cut": ensemble.cut, "tta_views": list(ensemble.views)}
    }
    model_bytes = export_onnx(ensemble, size, 17, metadata)
    logits = onnx_logits(model_bytes, images.numpy(), threads=0)
    parity = check_parity(logits, reference, labels, tolerance)  # raises, writing nothing, when they disagree
    cost = {
        "ensemble": ms_per_image(model_bytes, images.numpy()),
        "one_member": ms_per_image(export_onnx(build_ensemble(members[:1], False), size, 17, metadata), images.numpy()),
    }
    report = {
        "members": [str(p) for p in paths],
        "shared_cut": ensemble.cut,
        "tta_views": list(ensemble.views),
        "test_images": len(labels),
        "ensemble": {k: v for k, v in measured.items() if k != "metrics"},
        "members_alone": [{k: v for k, v in m.items() if k != "metrics"} for m in alone],
        "parity": parity.as_dict(),
        "ms_per_image_batch8": cost,
        "size_bytes": len(model_bytes),
        "classes": len(split.names),
        "members_trained": members_trained(members, store),
        "test": {"labels": encode_labels(labels), "predicted": encode_labels(reference.argmax(1))},
        "seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_write(out / "model.onnx") as handle:
        handle.write(model_bytes)
    write_json(out / "ensemble.json", report)
    return report
