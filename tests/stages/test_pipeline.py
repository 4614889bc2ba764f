"""The real pipeline through `dvc repro` on a shrunk config in a throw-away copy of the project."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import onnx
import pytest

from tests.helpers import make_project, run_tool, set_params
from transferkit.contract import read_metadata
from transferkit.data.cache import PreparedData
from transferkit.evaluation.shifts import far_shifts
from transferkit.inference import onnx_outputs
from transferkit.ood import detection_metrics

pytestmark = pytest.mark.slow
STAGES = ("prepare", "train", "evaluate", "gate", "export")


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory, elpv_subset: Path) -> tuple[Path, str]:
    """One `dvc repro` of the shrunk pipeline, shared by the tests of this module (in order)."""
    root = make_project(tmp_path_factory.mktemp("repro"), elpv_subset)
    result = run_tool(["dvc", "repro"], root)
    return root, result.stdout + result.stderr


def test_every_stage_runs_and_writes_its_outputs(reproduced) -> None:
    root, log = reproduced
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    data = json.loads((root / "reports/data.json").read_text())
    assert data["total"] == 160 and data["skipped"] == []
    assert sum(data["counts"]["test"].values()) == 40
    metrics = json.loads((root / "reports/evaluate/metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "ece", "per_class", "slices", "slice_gap"):
        assert key in metrics
    assert metrics["augment_preset"] == "orientation_free"  # auto on ELPV
    assert metrics["ece_uncalibrated"] >= 0 and metrics["temperature"] > 0
    assert "## Images per class and split" in (root / "reports/data.md").read_text()
    assert set(metrics["slices"]) == {"mono", "poly"}
    for png in (
        "reports/evaluate/confusion_matrix.png",
        "reports/evaluate/reliability.png",
        "reports/train/plots/images/training_curves.png",
    ):
        assert (root / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (root / "reports/train/plots/metrics/val/macro_f1.tsv").is_file()
    card = (root / "models/export/model_card.md").read_text()
    assert "## Test results" in card and "## Calibration" in card and "![reliability diagram](reliability.png)" in card
    assert (root / "models/export/reliability.png").is_file()
    assert "dvc.lock" in {p.name for p in root.iterdir()}


def test_evaluate_chooses_and_measures_the_operating_point(reproduced) -> None:
    root, log = reproduced
    decision = json.loads((root / "reports/evaluate/metrics.json").read_text())["decision"]
    assert decision["chosen_on"] == "val" and decision["rule"]["positive_classes"] == ["defective"]
    lower, upper = decision["rule"]["review_band"]
    assert lower <= decision["rule"]["threshold"] <= upper
    test = decision["test"]
    assert test["recall"]["of"] + test["false_alarm"]["of"] == 40
    assert test["recall"]["low"] <= test["recall"]["value"] <= test["recall"]["high"]
    assert set(decision["slices"]) == {"mono", "poly"}
    assert "decision: threshold" in log
    with (root / "reports/evaluate/predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {"p_functional", "p_defective", "decision"} <= set(rows[0])
    decisions = [row["decision"] for row in rows]
    assert decisions.count("review") == test["review"]["count"] and set(decisions) <= {"pass", "flag", "review"}
    for name in ("roc", "precision_recall", "risk_coverage"):
        assert len((root / f"reports/evaluate/{name}.csv").read_text().splitlines()) > 2
    for png in ("operating_point.png", "errors.png"):
        assert (root / "reports/evaluate" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    gate = {rule["rule"] for rule in json.loads((root / "reports/gate.json").read_text())["rules"]}
    assert {"min_recall", "max_false_alarm", "max_review_fraction"} <= gate
    card = (root / "models/export/model_card.md").read_text()
    assert "## Decision" in card and "of 1,000 defective cells about" in card and "![error gallery](errors.png)" in card
    assert (root / "models/export/errors.png").is_file()


def test_exported_model_is_verified_and_self_describing(reproduced) -> None:
    root, _ = reproduced
    parity = json.loads((root / "reports/export.json").read_text())["parity"]
    assert parity["passed"] and parity["max_abs_diff"] <= 1e-4 and parity["argmax_agreement"] == 1.0
    metadata = read_metadata(onnx.load(str(root / "models/export/model.onnx")))
    assert metadata["class_names"] == ["functional", "defective"]
    assert metadata["image_size"] == 64 and metadata["resize"] == "bilinear"
    metrics = json.loads((root / "reports/evaluate/metrics.json").read_text())
    assert metadata["test_metrics"]["accuracy"] == metrics["accuracy"]
    assert len(metadata["data_hash"]) == 16 and len(metadata["params_hash"]) == 16
    assert metadata["augment_preset"] == "orientation_free"
    assert metadata["calibration"]["temperature"] == metrics["temperature"]
    assert metadata["calibration"]["outputs"] == "temperature-scaled"
    # The rule evaluate chose is in the graph, and decides every test image as fp32 PyTorch does.
    assert metadata["decision"]["threshold"] == metrics["decision"]["rule"]["threshold"]
    assert metadata["outputs"] == ["logits", "probabilities", "decision", "heatmap", "embedding", "ood_score"]
    report = json.loads((root / "reports/export.json").read_text())["decision"]
    assert report["passed"] and report["flips"] == 0 and report["count"] == 40
    heatmap = json.loads((root / "reports/export.json").read_text())["heatmap"]
    assert heatmap["passed"] and heatmap["max_sum_diff"] <= 1e-4
    ood = json.loads((root / "reports/export.json").read_text())["ood_score"]
    assert ood["passed"] and ood["max_relative_score_diff"] <= 1e-3
    assert metadata["ood"]["method"] == "mahalanobis" and metadata["ood"]["threshold"] == metrics["ood"]["threshold"]
    assert metadata["decision"]["out_of_distribution"]["above"] == metrics["ood"]["threshold"]
    reference = metadata["drift_reference"]
    assert reference["split"] == "val" and len(reference["confidence"]) == len(reference["ood_score"]) > 0


def test_exported_model_sends_what_it_never_saw_to_review(reproduced) -> None:
    """Far shifts (noise, photos) score above the threshold that 95 % of validation cells stay
    under, and the in-graph decision sends them to review; the test cells mostly pass it."""
    root, _ = reproduced
    model = (root / "models/export/model.onnx").read_bytes()
    prepared = PreparedData.load(root / "data/prepared")
    cells = prepared.images_chw(prepared.indices("test")).numpy()
    threshold = read_metadata(onnx.load_from_string(model))["ood"]["threshold"]
    wanted = ["decision", "ood_score"]
    in_scores = onnx_outputs(model, cells, wanted)["ood_score"]
    for name in ("uniform_noise", "package_photos"):
        found = onnx_outputs(model, far_shifts(64, 40)[name], wanted)
        figures = detection_metrics(in_scores, found["ood_score"], threshold)
        assert figures["auroc"] > 0.95 and figures["shifted_flagged"] > 0.9, (name, figures)
        assert (found["decision"][found["ood_score"] > threshold] == 2).all()  # review
    assert (in_scores > threshold).mean() < 0.3


def test_second_repro_is_a_no_op(reproduced) -> None:
    root, _ = reproduced
    log = run_tool(["dvc", "repro"], root).stdout
    assert "Running stage" not in log
    assert "up to date" in run_tool(["dvc", "status"], root).stdout


def test_changing_train_params_does_not_rerun_prepare(reproduced) -> None:
    root, _ = reproduced
    original = (root / "params.yaml").read_text()
    set_params(root, train__epochs=3)
    try:
        status = json.loads(run_tool(["dvc", "status", "--json"], root).stdout)
        assert "train" in status and "prepare" not in status
    finally:
        (root / "params.yaml").write_text(original)


def test_predict_on_a_folder_agrees_with_evaluation(reproduced) -> None:
    root, _ = reproduced
    output = root / "predictions.csv"
    run_tool(["transferkit", "predict", "models/export/model.onnx", "data/raw/elpv/images", "-o", str(output)], root)
    with output.open() as handle:
        predicted = {Path(row["file"]).name: row for row in csv.DictReader(handle)}
    assert len(predicted) == 160
    with (root / "reports/evaluate/predictions.csv").open() as handle:
        evaluated = list(csv.DictReader(handle))
    assert len(evaluated) == 40
    for row in evaluated:  # same preprocessing, same model: the same answer for every test image
        assert predicted[Path(row["file"]).name]["label"] == row["predicted"]


def test_failing_gate_stops_export_and_keeps_the_previous_model(reproduced) -> None:
    root, _ = reproduced
    model_before = (root / "models/export/model.onnx").read_bytes()
    set_params(root, gate__min_accuracy=0.999, gate__min_macro_f1=0.999, gate__min_recall=0.999)
    result = run_tool(["dvc", "repro"], root, check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "min_accuracy" in log and "min_macro_f1" in log and "min_recall" in log and "FAILED" in log
    assert "Running stage 'export'" not in log
    assert (root / "models/export/model.onnx").read_bytes() == model_before
    gate = json.loads((root / "reports/gate.json").read_text())
    assert gate["passed"] is False
