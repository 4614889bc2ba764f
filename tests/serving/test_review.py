"""The review page's API in process: a label lands in the drop and the image leaves the queue, and
every bad input (a stale or double submit, an item gone, a wrong token, the folder deleted under the
page, a restart in the middle) gets a clear answer with nothing lost or written twice.

The queue is filled the real way: noise images posted to the real server with model_ood are out of
distribution, so the monitor queues them for review.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ADMIN_TOKEN, CLASSES
from tests.serving.test_monitor import noise_png, post_all, settled
from transferkit.decision import OUT_OF_DISTRIBUTION
from transferkit.io import sha256_bytes
from transferkit.review_drop import INVALID, MANIFEST, REVIEW_PAGE, UNDO, UNLABELLED, DataDrop, Label
from transferkit.serving.settings import ADMIN_TOKEN_ENV

AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def manifest(drop: Path) -> list[dict]:
    path = drop / MANIFEST
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def fill(client, count: int, seed: int = 0) -> list[bytes]:
    """Post ``count`` noise images; return them once the monitor has queued them all for review."""
    rng = np.random.default_rng(seed)
    images = [noise_png(rng) for _ in range(count)]
    before = client.get("/v1/monitor").json()["predictions"]["total"]
    entries = post_all(client, [(f"noise{i}.png", image) for i, image in enumerate(images)])
    assert [entry["reason"] for entry in entries] == [OUT_OF_DISTRIBUTION] * count
    settled(client, before + count)
    return images


def next_item(client, after: str | None = None) -> dict:
    response = client.get("/v1/review/next", params={} if after is None else {"after": after}, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def label(client, item_id: str, name: str, who: str = "ann"):
    return client.post("/v1/review/label", json={"id": item_id, "label": name, "who": who}, headers=AUTH)


@pytest.fixture
def desk(serve, model_ood: Path, tmp_path: Path):
    """A server with a review queue and a drop: (client, monitor_dir, drop)."""
    monitor, drop = tmp_path / "monitor", tmp_path / "elpv-reviewed"
    return serve(model_ood, monitor_dir=monitor, review_drop=drop), monitor, drop


def test_a_label_lands_in_the_drop_and_the_image_leaves_the_queue(desk) -> None:
    client, monitor, drop = desk
    images = fill(client, 3)
    status = client.get("/v1/review", headers=AUTH).json()
    assert status == {"classes": CLASSES, "invalid": INVALID, "left": 3, "drop": str(drop)}
    first = next_item(client)
    item = first["item"]
    assert first["left"] == 3 and (item["decision"], item["reason"]) == ("review", OUT_OF_DISTRIBUTION)
    assert item["image"].startswith("data:image/png;base64,") and item["overlay"].startswith("data:image/png;base64,")
    image = base64.b64decode(item["image"].split(",", 1)[1])
    assert image == images[0] and item["sha256"] == sha256_bytes(image)  # oldest first, the bytes as sent
    assert set(item["probabilities"]) == set(CLASSES) and item["ood_score"] > 0
    assert next_item(client, after=item["id"])["item"]["id"] != item["id"]  # skip: the next one, this stays

    answer = label(client, item["id"], "defective")
    assert answer.status_code == 200, answer.text
    saved = drop / "defective" / f"{item['sha256']}.png"
    assert answer.json() == {"status": "labelled", "id": item["id"], "label": "defective", "path": str(saved),
                             "left": 2}  # fmt: skip
    assert saved.read_bytes() == images[0]
    [row] = manifest(drop)
    version = client.get("/v1/model").json()["version"]
    assert (row["label"], row["who"], row["source"], row["previous"]) == ("defective", "ann", REVIEW_PAGE, None)
    assert (row["model_version"], row["model_decision"], row["model_reason"]) == (
        version,
        "review",
        OUT_OF_DISTRIBUTION,
    )
    assert not list((monitor / "review").glob(f"{item['id']}.*"))  # out of the queue, kept for undo
    assert sorted(p.name for p in (monitor / "review" / "labelled").iterdir()) == [
        f"{item['id']}.json", f"{item['id']}.png",
    ]  # fmt: skip
    body = client.get("/v1/monitor").json()["review_queue"]
    assert (body["count"], body["labelled"]) == (2, 1)  # labelled: in the drop, not yet ingested
    assert next_item(client)["item"]["id"] != item["id"]

    invalid = next_item(client)["item"]
    assert label(client, invalid["id"], INVALID).json()["path"] == str(drop / MANIFEST)
    assert client.get("/v1/monitor").json()["review_queue"]["labelled"] == 2
    DataDrop(drop, CLASSES).mark_ingested()  # what the retraining loop does before `dvc add`
    assert client.get("/v1/monitor").json()["review_queue"]["labelled"] == 0


def test_a_stale_page_submitting_twice_is_answered_and_nothing_is_written_twice(desk) -> None:
    client, _, drop = desk
    fill(client, 2)
    item = next_item(client)["item"]
    assert label(client, item["id"], "functional").json()["status"] == "labelled"
    again = label(client, item["id"], "functional", who="bob")
    assert again.status_code == 200 and again.json()["status"] == "already labelled"
    other = label(client, item["id"], "defective", who="bob")
    assert other.status_code == 409
    assert "already labelled: it has 'functional' by ann" in other.json()["error"] and "undo" in other.json()["error"]
    assert len(manifest(drop)) == 1 and next_item(client)["left"] == 1


def test_an_item_no_longer_in_the_queue_a_bad_id_or_label_and_a_wrong_token(desk) -> None:
    client, _, drop = desk
    fill(client, 1)
    item = next_item(client)["item"]
    gone = label(client, "20000101T000000_000000Z-0123456789abcdef", "functional")
    assert gone.status_code == 404 and "no longer in the review queue" in gone.json()["error"]
    assert label(client, "../../etc/passwd", "functional").status_code == 422  # ids never reach a path
    unknown = label(client, item["id"], "cracked")
    assert unknown.status_code == 400 and "unknown label 'cracked'" in unknown.json()["error"]
    assert client.post("/v1/review/label", json={"id": item["id"], "label": "functional", "who": ""},
                       headers=AUTH).status_code == 422  # fmt: skip
    missing = client.get("/v1/review/next")
    assert missing.status_code == 401 and "Bearer" in missing.json()["error"]
    wrong = client.post("/v1/review/label", json={"id": item["id"], "label": "functional", "who": "ann"},
                        headers={"authorization": "Bearer nope"})  # fmt: skip
    assert wrong.status_code == 403 and wrong.json()["error"] == "wrong admin token"
    assert client.get("/review").status_code == 200  # the page itself asks for the token
    assert manifest(drop) == [] and next_item(client)["left"] == 1  # nothing landed, the image still waits


def test_undo_puts_the_image_back_and_a_second_undo_changes_nothing(desk) -> None:
    client, _, drop = desk
    fill(client, 2)
    item = next_item(client)["item"]
    label(client, item["id"], "defective")
    undone = client.post("/v1/review/undo", json={"id": item["id"], "who": "ann"}, headers=AUTH)
    assert undone.status_code == 200, undone.text
    body = undone.json()
    assert (body["status"], body["label"], body["left"], body["item"]["id"]) == ("undone", None, 2, item["id"])
    assert body["item"]["overlay"] and next_item(client)["item"]["id"] == item["id"]  # queued again, oldest
    assert [(row["label"], row["source"]) for row in manifest(drop)] == [("defective", REVIEW_PAGE),
                                                                          (UNLABELLED, UNDO)]  # fmt: skip
    assert not (drop / "defective").exists()
    twice = client.post("/v1/review/undo", json={"id": item["id"], "who": "ann"}, headers=AUTH)
    assert twice.status_code == 200 and twice.json()["status"] == "already undone" and len(manifest(drop)) == 2
    never = client.post("/v1/review/undo", json={"id": "20000101T000000_000000Z-0123456789abcdef", "who": "ann"},
                        headers=AUTH)  # fmt: skip
    assert never.status_code == 404 and "cannot be undone" in never.json()["error"]
    assert label(client, item["id"], "functional").json()["status"] == "labelled"  # and labelled anew
    assert [row["label"] for row in manifest(drop)][-1] == "functional"


def test_the_queue_folder_deleted_under_the_page_is_a_clear_answer_and_serving_goes_on(desk) -> None:
    client, monitor, drop = desk
    fill(client, 2)
    item = next_item(client)["item"]
    shutil.rmtree(monitor / "review")
    gone = label(client, item["id"], "functional")
    assert (
        gone.status_code == 410 and "is gone" in gone.json()["error"] and "nothing was labelled" in gone.json()["error"]
    )
    assert manifest(drop) == []
    assert next_item(client) == {"item": None, "left": 0}  # an empty queue again, the folder made anew
    fill(client, 1, seed=1)  # the server goes on: predictions answered, the new review image queued
    fresh = next_item(client)
    assert fresh["left"] == 1 and label(client, fresh["item"]["id"], "functional").status_code == 200


def test_a_restart_in_the_middle_of_a_label_loses_and_duplicates_nothing(serve, desk, model_ood: Path) -> None:
    client, monitor, drop = desk
    images = fill(client, 2)
    item = next_item(client)["item"]
    # A crash after the drop's write and before the image left the queue: the label is in the drop...
    DataDrop(drop, CLASSES).write(
        images[0], Label(item["sha256"], "defective", "ann", "2026-12-04T00:00:00+00:00", None, None, None, REVIEW_PAGE)
    )
    restarted = serve(model_ood, monitor_dir=monitor, review_drop=drop)  # ...a new process takes over both folders
    again = next_item(restarted)
    assert (again["left"], again["item"]["id"]) == (2, item["id"])  # the image is still there to label
    assert label(restarted, item["id"], "defective").json()["status"] == "labelled"
    assert len(manifest(drop)) == 1 and next_item(restarted)["left"] == 1  # one row, the image gone from the queue
    assert restarted.get("/v1/monitor").json()["review_queue"]["labelled"] == 1


@pytest.mark.parametrize(
    "flags", [{}, {"monitor_dir": "monitor"}, {"review_drop": "drop"}], ids=["neither", "no-drop", "no-queue"]
)
def test_the_page_is_off_without_a_queue_and_a_drop_and_says_which_flags(
    serve, model_ood: Path, tmp_path: Path, flags: dict[str, str]
) -> None:
    client = serve(model_ood, **{key: tmp_path / value for key, value in flags.items()})
    page = client.get("/review")
    assert page.status_code == 404 and "--monitor-dir" in page.text and "--review-drop" in page.text
    api = client.get("/v1/review/next", headers=AUTH)
    assert api.status_code == 404 and "--review-drop" in api.json()["error"]


def test_the_page_ships_its_assets_and_loads_nothing_from_elsewhere(desk) -> None:
    client, _, _ = desk
    page = client.get("/review")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/review/static/review.js", "/review/static/review.css"):
        assert asset in page.text
        response = client.get(asset)
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text  # no CDN: works offline
    assert "http://" not in page.text and "https://" not in page.text


def test_an_image_the_cap_evicted_while_it_was_on_screen_is_a_404_and_lands_nowhere(
    serve, model_ood: Path, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    client = serve(model_ood, monitor_dir=tmp_path / "monitor", review_drop=drop, review_queue_max_images=2)
    fill(client, 2)
    shown = next_item(client)["item"]  # the oldest, on the page
    fill(client, 2, seed=1)  # meanwhile two more arrive: the cap drops the oldest two
    gone = label(client, shown["id"], "defective")
    assert gone.status_code == 404 and "dropped by the queue's cap" in gone.json()["error"]
    assert manifest(drop) == [] and next_item(client)["left"] == 2


def test_without_an_admin_token_on_the_server_the_api_says_how_to_turn_it_on(
    serve, model_ood: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV)
    client = serve(model_ood, monitor_dir=tmp_path / "monitor", review_drop=tmp_path / "drop")
    refused = client.get("/v1/review", headers=AUTH)
    assert refused.status_code == 403 and ADMIN_TOKEN_ENV in refused.json()["error"]
