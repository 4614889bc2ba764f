"""Served monitoring: counts, drift, the prediction log and the review queue, off the request path.

Real exported models in the real server (in process, ONNX Runtime on the CPU) with real ELPV
cells. The drift reference is measured the way an export would: the model's confidences on
in-distribution images (half the ELPV subset); the other half is the in-distribution stream, and
uniform noise the shifted one. Expected numbers come from scipy and decision.py, not the server.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
from scipy.stats import ks_2samp

from tests.helpers import ADMIN_TOKEN, CLASSES, IMAGE_SIZE, metric
from transferkit.contract import DECISION_OUTPUT, DRIFT_REFERENCE, METADATA_PREFIX, OOD_OUTPUT, read_metadata
from transferkit.decision import NEAR_THRESHOLD, OUT_OF_DISTRIBUTION, DecisionRule
from transferkit.serving.onnx_model import OnnxClassifier

OOD_THRESHOLD = 0.35  # on 1 - top probability: the test models' stand-in ood_score


def with_metadata(source: Path, dest: Path, **values: object) -> Path:
    """``source`` with transferkit metadata keys set (JSON, as the exporter writes them)."""
    proto = onnx.load(str(source))
    props = {entry.key: entry.value for entry in proto.metadata_props}
    props.update({METADATA_PREFIX + key: json.dumps(value) for key, value in values.items()})
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(dest))
    return dest


@pytest.fixture(scope="module")
def elpv_images(elpv_subset: Path) -> list[Path]:
    return sorted((elpv_subset / "images").glob("*.png"))


@pytest.fixture(scope="module")
def reference_confidences(model_rule: Path, elpv_images: list[Path]) -> list[float]:
    """The model's top probabilities on every other ELPV image: what an export measures on val."""
    classifier = OnnxClassifier(model_rule, device="cpu")
    images = np.stack([classifier.preprocess(path) for path in elpv_images[0::2]])
    return sorted(map(float, classifier.run(images)[1].max(1)))


@pytest.fixture(scope="module")
def model_drift(model_rule: Path, reference_confidences: list[float]) -> Path:
    """model_rule with a drift reference (confidence only: it has no ood_score output)."""
    reference = {"split": "val", "confidence": reference_confidences}
    return with_metadata(model_rule, model_rule.with_name("model-drift.onnx"), **{DRIFT_REFERENCE: reference})


def noise_png(rng: np.random.Generator) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def post_all(client, payloads: list[tuple[str, bytes]], chunk: int = 20) -> list[dict]:
    """Every payload through /v1/predict/batch; the entries, in order."""
    entries = []
    for start in range(0, len(payloads), chunk):
        files = [("files", (name, data, "image/png")) for name, data in payloads[start : start + chunk]]
        response = client.post("/v1/predict/batch", files=files)
        assert response.status_code == 200, response.text
        entries.extend(response.json()["predictions"])
    return entries


def settled(client, expected: int, timeout: float = 30) -> dict:
    """/v1/monitor once the monitor thread has handled (or dropped) ``expected`` images."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/v1/monitor").json()
        if body["predictions"]["total"] + body["dropped"] >= expected and body["pending"] == 0:
            return body
        assert time.monotonic() < deadline, f"the monitor did not settle at {expected} images: {body}"
        time.sleep(0.02)


def probabilities(entries: list[dict]) -> np.ndarray:
    return np.array([[entry["probabilities"][name] for name in CLASSES] for entry in entries])


def test_drift_on_confidence_stays_quiet_in_distribution_and_fires_for_noise(
    serve, model_drift: Path, elpv_images: list[Path], reference_confidences: list[float]
) -> None:
    client = serve(model_drift, drift_window=80, drift_min_samples=40)
    drift = client.get("/v1/monitor").json()["drift"]
    assert drift["available"] and drift["on"] == "confidence" and drift["reference"] == "val"
    assert (drift["window"], drift["window_size"], drift["min_samples"], drift["alpha"]) == (0, 80, 40, 0.01)
    assert drift["test"] == "ks_2samp" and drift["statistic"] is None and "collecting" in drift["reason"]

    entries = post_all(client, [(path.name, path.read_bytes()) for path in elpv_images[1::2]])
    body = settled(client, len(entries))
    drift = body["drift"]
    expected = ks_2samp(probabilities(entries).max(1), reference_confidences)
    assert drift["window"] == 80 and not drift["detected"] and drift["reason"] is None
    assert drift["statistic"] == pytest.approx(expected.statistic) and drift["p_value"] == pytest.approx(
        expected.pvalue
    )
    assert drift["p_value"] >= 0.01
    assert metric(client, "transferkit_drift_detected") == 0
    assert metric(client, "transferkit_drift_p_value") == pytest.approx(expected.pvalue)

    # What was counted is what was answered; a review says why (this rule has no OOD threshold).
    decisions = Counter(entry["decision"] for entry in entries)
    assert body["predictions"]["total"] == 80 and body["dropped"] == 0
    assert body["predictions"]["by_class"] == dict(Counter(entry["label"] for entry in entries))
    assert body["predictions"]["by_decision"] == dict(decisions) and decisions["review"] > 0
    assert body["predictions"]["by_reason"] == {NEAR_THRESHOLD: decisions["review"]}
    assert all(e["reason"] == (NEAR_THRESHOLD if e["decision"] == "review" else None) for e in entries)
    assert all(entry["ood_score"] is None for entry in entries)
    assert metric(client, "transferkit_top_probability_count") == 80
    assert metric(client, "transferkit_ood_score_count") == 0  # the model has no ood_score
    review = f'transferkit_decisions_total{{decision="review",reason="{NEAR_THRESHOLD}"}}'
    assert metric(client, review) == decisions["review"]

    # A reload starts the window over; then noise is drift.
    reloaded = client.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})
    assert reloaded.status_code == 200, reloaded.text
    assert client.get("/v1/monitor").json()["drift"]["window"] == 0
    rng = np.random.default_rng(0)
    noise = post_all(client, [(f"noise{i}.png", noise_png(rng)) for i in range(60)])
    drift = settled(client, 80 + len(noise))["drift"]
    assert drift["window"] == 60 and drift["detected"] and drift["p_value"] < 0.01
    assert drift["p_value"] == pytest.approx(ks_2samp(probabilities(noise).max(1), reference_confidences).pvalue)
    assert metric(client, "transferkit_drift_detected") == 1


def test_an_ood_score_output_is_answered_watched_and_named_as_the_reason(
    serve, model_ood: Path, elpv_images: list[Path]
) -> None:
    client = serve(model_ood, drift_window=40, drift_min_samples=20)
    rule = DecisionRule.from_metadata(read_metadata(model_ood)[DECISION_OUTPUT], CLASSES)
    cells = post_all(client, [(path.name, path.read_bytes()) for path in elpv_images[3::4]])
    body = settled(client, len(cells))
    assert body["drift"]["on"] == OOD_OUTPUT and body["drift"]["window"] == len(cells)
    assert not body["drift"]["detected"], body["drift"]  # held-out cells look like the reference's
    rng = np.random.default_rng(0)
    noise = post_all(client, [(f"noise{i}.png", noise_png(rng)) for i in range(10)])
    entries = cells + noise
    scores = np.array([entry["ood_score"] for entry in entries])
    codes = np.array([rule.names.index(entry["decision"]) for entry in entries])
    np.testing.assert_array_equal(codes, rule.decide(probabilities(entries), scores))  # the graph's twin
    reasons = [entry["reason"] for entry in entries]
    assert reasons == rule.reasons(codes, scores)
    assert reasons[len(cells) :] == [OUT_OF_DISTRIBUTION] * len(noise)  # noise is unlike any cell
    assert (scores[len(cells) :] > rule.ood_threshold).all()
    body = settled(client, len(entries))
    assert body["predictions"]["by_reason"] == dict(Counter(r for r in reasons if r is not None))
    assert metric(client, "transferkit_ood_score_count") == len(entries)
    assert metric(client, "transferkit_ood_score_sum") == pytest.approx(scores.sum(), rel=1e-5)


def test_review_queue_and_prediction_log_stay_within_caps_under_64_clients(
    serve, model_rule: Path, cells: list[Path], tmp_path: Path
) -> None:
    folder = tmp_path / "monitor"
    cap = 3 * max(len(cell.read_bytes()) for cell in cells) + 2000
    client = serve(
        model_rule,
        monitor_dir=folder,
        review_queue_max_images=4,
        review_queue_max_bytes=cap,
        prediction_log_max_bytes=8192,
        max_batch_size=8,
    )
    bodies = [b"not an image" if i % 4 == 0 else cells[i % len(cells)].read_bytes() for i in range(192)]

    def post(body: bytes) -> int:
        return client.post("/v1/predict", content=body, headers={"content-type": "image/png"}).status_code

    with ThreadPoolExecutor(64) as pool:
        statuses = list(pool.map(post, bodies))
    assert statuses == [400 if body == b"not an image" else 200 for body in bodies]
    good = statuses.count(200)
    body = settled(client, good)
    assert body["predictions"]["total"] + body["dropped"] == good
    assert body["errors"] == {"prediction_log": 0, "review_queue": 0}

    review = folder / "review"
    images, sidecars = sorted(review.glob("*.png")), sorted(review.glob("*.json"))
    assert 1 <= len(images) <= 4 and [p.with_suffix(".json") for p in images] == sidecars
    on_disk = sum(path.stat().st_size for path in review.iterdir())
    assert on_disk <= cap and (body["review_queue"]["count"], body["review_queue"]["bytes"]) == (len(images), on_disk)
    originals = {cell.read_bytes() for cell in cells}
    for image, sidecar in zip(images, sidecars, strict=True):
        assert image.read_bytes() in originals  # the bytes as sent, not a re-encoding
        outputs = json.loads(sidecar.read_text())
        assert outputs["decision"] == "review" and outputs["reason"] == NEAR_THRESHOLD
        assert set(outputs["probabilities"]) == set(CLASSES) and outputs["model"]["version"].startswith("sha256:")

    logs = [path for path in folder.iterdir() if path.name.startswith("predictions.jsonl")]
    logged = sum(path.stat().st_size for path in logs)
    assert len(logs) == 3 and logged <= 8192 and body["prediction_log"]["bytes"] == logged  # rotated, capped
    last = json.loads((folder / "predictions.jsonl").read_text().splitlines()[-1])
    assert {"time", "model", "file", "label", "probabilities", "decision", "reason"} <= set(last)
    assert metric(client, "transferkit_review_queue_images") == len(images)


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A monitor_dir nothing can be created in: under a read-only folder (chmod 0o500) or, for root,
    who ignores modes, under a regular file."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        yield blocker / "monitor"
    else:
        yield locked / "monitor"
    locked.chmod(0o700)


def test_an_unwritable_monitor_dir_is_counted_and_every_request_still_answers(
    serve, model_rule: Path, cells: list[Path], unwritable: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="transferkit.serving.monitor")
    client = serve(model_rule, monitor_dir=unwritable)
    singles = [client.post("/v1/predict", content=c.read_bytes(), headers={"content-type": "image/png"}) for c in cells]
    assert [response.status_code for response in singles] == [200] * len(cells)
    entries = [response.json() for response in singles] + post_all(client, [(c.name, c.read_bytes()) for c in cells])
    reviews = sum(entry["decision"] == "review" for entry in entries)
    body = settled(client, len(entries))
    assert reviews > 0 and body["errors"] == {"prediction_log": len(entries), "review_queue": reviews}
    assert body["predictions"]["total"] == len(entries) and body["review_queue"]["count"] == 0
    assert metric(client, 'transferkit_monitor_errors_total{what="prediction_log"}') == len(entries)
    assert metric(client, 'transferkit_monitor_errors_total{what="review_queue"}') == reviews
    failures = [record for record in caplog.records if "write failed" in record.getMessage()]
    assert len(failures) == 2  # once per kind, not once per record


def test_a_model_without_decision_or_ood_outputs_serves_and_is_monitored(
    serve, model_old: Path, cells: list[Path]
) -> None:
    client = serve(model_old, model_name="cells")
    single = client.post("/v1/predict", content=cells[0].read_bytes(), headers={"content-type": "image/png"})
    assert single.status_code == 200
    assert (single.json()["decision"], single.json()["reason"], single.json()["ood_score"]) == (None, None, None)
    entries = post_all(client, [(cell.name, cell.read_bytes()) for cell in cells[1:4]])
    tensors = np.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    v2 = client.post(
        "/v2/models/cells/infer",
        json={
            "inputs": [
                {"name": "images", "shape": list(tensors.shape), "datatype": "UINT8", "data": [0] * tensors.size}
            ]
        },
    )
    assert v2.status_code == 200, v2.text
    body = settled(client, 6)
    assert set(body) >= {"model", "drift", "predictions", "review_queue", "prediction_log", "dropped", "errors"}
    assert body["model"]["name"] == "cells" and body["model"]["version"].startswith("sha256:")
    assert body["predictions"]["total"] == 6 and sum(body["predictions"]["by_class"].values()) == 6
    assert body["predictions"]["by_decision"] == {} and body["predictions"]["by_reason"] == {}
    assert all(entry["reason"] is None and entry["ood_score"] is None for entry in entries)
    drift = body["drift"]
    assert set(drift) == {
        "available", "detected", "test", "on", "statistic", "p_value", "window", "window_size", "min_samples",
        "alpha", "reference", "reason",
    }  # fmt: skip
    assert (drift["available"], drift["detected"], drift["on"], drift["reference"]) == (False, False, None, None)
    assert DRIFT_REFERENCE in drift["reason"] and drift["window"] == 0 and drift["statistic"] is None
    assert body["review_queue"] == {
        "enabled": False, "count": 0, "bytes": 0, "max_count": 1000, "max_bytes": 512 * 2**20, "labelled": 0,
        "path": None,
    }  # fmt: skip
    assert body["prediction_log"] == {"enabled": False, "path": None, "bytes": 0, "max_bytes": 64 * 2**20}
    assert body["errors"] == {"prediction_log": 0, "review_queue": 0} and body["dropped"] == 0
    assert metric(client, "transferkit_drift_detected") == 0


def test_a_tiny_queue_drops_and_counts_without_failing_a_request(serve, model_rule: Path, cells: list[Path]) -> None:
    client = serve(model_rule, monitor_queue=1)
    files = [("files", (cell.name, cell.read_bytes(), "image/png")) for cell in cells]

    def post(_: int) -> int:
        return client.post("/v1/predict/batch", files=files).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(post, range(16)))
    assert statuses == [200] * 16
    sent = 16 * len(cells)
    body = settled(client, sent)
    assert body["dropped"] > 0 and body["predictions"]["total"] + body["dropped"] == sent
    assert metric(client, "transferkit_monitor_dropped_total") == body["dropped"]
