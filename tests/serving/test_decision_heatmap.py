"""The optional outputs over /v1: the decision by name, heatmaps on request, older models unchanged.

Real exported models in the real server (in process, ONNX Runtime on the CPU); expectations come
from the rule's numpy twin and from the maps' own definition, not from the server's code.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import CLASSES, RULE
from transferkit.contract import DECISION_OUTPUT, HEATMAP_OUTPUT, read_metadata
from transferkit.errors import DataError
from transferkit.serving.explanation import overlay_targets
from transferkit.serving.onnx_model import OnnxClassifier


def post_image(client, payload: bytes, **params: str):
    return client.post("/v1/predict", content=payload, headers={"content-type": "image/png"}, params=params)


def post_batch(client, payloads: list[tuple[str, bytes]], **params: str):
    return client.post("/v1/predict/batch", files=[("files", (n, p, "image/png")) for n, p in payloads], params=params)


def rule_names(probabilities: list[dict[str, float]]) -> list[str]:
    """What the rule decides on the probabilities a response carries."""
    array = np.array([[entry[name] for name in CLASSES] for entry in probabilities])
    return [RULE.names[code] for code in RULE.decide(array)]


def non_square(cell: Path, size: tuple[int, int] = (120, 90)) -> bytes:
    """A real cell stretched to ``size``: an overlay's width and height cannot be swapped unseen."""
    buffer = io.BytesIO()
    with Image.open(cell) as image:
        image.resize(size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decision_names_agree_with_the_rule(serve, model_rule: Path, cells: list[Path]) -> None:
    client = serve(model_rule)
    singles = [post_image(client, cell.read_bytes()).json() for cell in cells]
    assert [body["decision"] for body in singles] == rule_names([body["probabilities"] for body in singles])
    assert {body["decision"] for body in singles} >= {"pass", "review"}  # the fixture's cells span the band
    assert all(body["heatmap"] is None for body in singles)  # only on request
    batch = post_batch(client, [(c.name, c.read_bytes()) for c in cells] + [("broken.png", b"not an image")])
    assert batch.status_code == 200, batch.text
    *good, broken = batch.json()["predictions"]
    assert [entry["decision"] for entry in good] == [body["decision"] for body in singles]
    assert broken["decision"] is None and broken["error"]
    info = client.get("/v1/model").json()
    assert info[DECISION_OUTPUT] == read_metadata(model_rule)[DECISION_OUTPUT]
    assert info[HEATMAP_OUTPUT] == read_metadata(model_rule)[HEATMAP_OUTPUT]


def test_heatmap_array_is_the_positive_evidence_at_the_metadata_shape(
    serve, model_rule: Path, cells: list[Path]
) -> None:
    client = serve(model_rule)
    described = read_metadata(model_rule)[HEATMAP_OUTPUT]
    classifier = OnnxClassifier(model_rule, device="cpu")
    for cell in cells[:3]:
        body = post_image(client, cell.read_bytes(), heatmap="array").json()
        heatmap = body["heatmap"]
        assert heatmap["classes"] == ["defective"]  # the rule's positive class, whatever the label
        assert heatmap["shape"] == described["shape"] and heatmap["stride"] == described["stride"]
        values = np.array(heatmap["values"])
        assert values.shape == tuple(described["shape"]) and heatmap["png"] is None
        # Evidence for a class sums to its logit minus the mean logit: the part that moves its probability.
        logits = classifier.run(classifier.preprocess(cell)[None])[0][0]
        assert values.sum() == pytest.approx(logits[1] - logits.mean(), abs=1e-4)


def test_without_a_rule_the_evidence_is_for_the_predicted_class(serve, model_a: Path, cells: list[Path]) -> None:
    client = serve(model_a)
    bodies = post_batch(client, [(c.name, c.read_bytes()) for c in cells[:4]], heatmap="array").json()["predictions"]
    for body in bodies:
        assert body["decision"] is None
        assert body["heatmap"]["classes"] == [body["label"]]
        assert np.array(body["heatmap"]["values"]).sum() > 0  # the predicted class has net evidence for it


def test_heatmap_png_is_an_overlay_at_the_image_size(serve, model_rule: Path, cells: list[Path]) -> None:
    client = serve(model_rule)
    payload = non_square(cells[0])
    single = post_image(client, payload, heatmap="png")
    assert single.status_code == 200, single.text
    batch = post_batch(
        client, [("a.png", payload), ("broken.png", b"\x89PNG truncated"), ("b.png", payload)], heatmap="png"
    )
    entries = batch.json()["predictions"]
    assert entries[1]["heatmap"] is None and entries[1]["error"]
    for heatmap in (single.json()["heatmap"], entries[0]["heatmap"], entries[2]["heatmap"]):
        assert heatmap["values"] is None
        with Image.open(io.BytesIO(base64.b64decode(heatmap["png"]))) as overlay:
            assert overlay.format == "PNG" and overlay.size == (120, 90) and overlay.mode == "RGB"


def test_an_older_model_serves_unchanged_and_refuses_heatmaps(serve, model_old: Path, cells: list[Path]) -> None:
    client = serve(model_old)
    body = post_image(client, cells[0].read_bytes())
    assert body.status_code == 200
    assert body.json()["label"] in CLASSES and body.json()["decision"] is None
    info = client.get("/v1/model").json()
    assert info["outputs"] == ["logits", "probabilities"] and DECISION_OUTPUT not in info and HEATMAP_OUTPUT not in info
    for response in (
        post_image(client, cells[0].read_bytes(), heatmap="array"),
        post_batch(client, [(cells[0].name, cells[0].read_bytes())], heatmap="png"),
    ):
        assert response.status_code == 400
        message = response.json()["error"]
        assert "no 'heatmap' output" in message and "transferkit export" in message


def test_an_unknown_heatmap_format_is_a_422_naming_the_choices(serve, model_rule: Path) -> None:
    response = post_image(serve(model_rule), b"unread", heatmap="jpeg")
    assert response.status_code == 422
    assert "heatmap" in response.json()["error"] and "'array' or 'png'" in response.json()["error"]


def test_overlay_targets_never_collide_or_overwrite(tmp_path: Path) -> None:
    (tmp_path / "class_a").mkdir()
    files = [tmp_path / "class_a" / "x.jpg", tmp_path / "class_b" / "x.png"]
    targets = overlay_targets(files, tmp_path / "out")
    assert targets == {
        files[0]: tmp_path / "out" / "class_a" / "x.png",
        files[1]: tmp_path / "out" / "class_b" / "x.png",
    }
    with pytest.raises(DataError, match="would both be drawn"):
        overlay_targets([tmp_path / "x.jpg", tmp_path / "x.png"], tmp_path / "out")
    with pytest.raises(DataError, match="would overwrite the image"):
        overlay_targets([tmp_path / "x.png"], tmp_path)
