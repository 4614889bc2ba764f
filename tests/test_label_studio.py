"""Label Studio out and back: the review queue as tasks, an export of them as labels in the data drop.

Two ways round: against Label Studio's documented JSON export format (always), and against a real
Label Studio server on loopback driven through label-studio-sdk (slow; it needs Label Studio's own
virtual environment, which `make label-studio` creates).
"""

from __future__ import annotations

import base64
import copy
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, run_tool
from transferkit.decision import LABEL_SUSPECTED, NEAR_THRESHOLD
from transferkit.errors import DataError
from transferkit.io import sha256_bytes
from transferkit.label_studio import FROM_NAME, TO_NAME, export_tasks, labeling_config, read_export
from transferkit.review_drop import INVALID, LABEL_STUDIO, DataDrop
from transferkit.serving.monitor_files import ReviewQueue

CLASSES = ["functional", "defective"]
REVIEW = [sys.executable, "-m", "transferkit.cli", "review"]
LS_VENV = Path(os.environ.get("LABEL_STUDIO_VENV", REPO / ".venv-label-studio"))
LS_TOKEN = "transferkit-test-token-0123456789abcdef"


def served_entry(label: str, p_defective: float, reason: str, **extra: Any) -> dict[str, Any]:
    """A sidecar as the server's monitor writes one (serving/monitor.py's ``_entry``)."""
    return {
        "time": "2026-11-24T10:00:00.000000+00:00",
        "model": {"name": "elpv-defects", "version": 3},
        "file": "upload.png",
        "label": label,
        "probabilities": {"functional": 1 - p_defective, "defective": p_defective},
        "decision": "review",
        "reason": reason,
        **extra,
    }


@pytest.fixture
def queue(tmp_path: Path, cells: list[Path]) -> Path:
    """A review folder with three real cells: two the server queued, one suspected label error."""
    review = ReviewQueue(tmp_path / "monitor" / "review", max_images=10, max_bytes=10**7, min_free_bytes=0)
    review.add(cells[0].read_bytes(), served_entry("defective", 0.55, NEAR_THRESHOLD))
    review.add(cells[1].read_bytes(), served_entry("functional", 0.3, NEAR_THRESHOLD))
    review.add(cells[2].read_bytes(), served_entry("defective", 0.9, LABEL_SUSPECTED, given_label="functional"))
    return review.folder


def annotate(task: dict[str, Any], number: int, *annotations: dict[str, Any]) -> dict[str, Any]:
    """``task`` as Label Studio's JSON export has it once annotated (https://labelstud.io/guide/export)."""
    return {**copy.deepcopy(task), "id": number, "project": 1, "annotations": list(annotations)}


def annotation(choice: str | None, when: str, cancelled: bool = False, user: Any = 7) -> dict[str, Any]:
    result = [] if choice is None else [{"id": "r1", "from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                                          "value": {"choices": [choice]}, "origin": "manual"}]  # fmt: skip
    return {"id": 100, "result": result, "was_cancelled": cancelled, "ground_truth": False, "created_at": when,
            "updated_at": when, "lead_time": 2.5, "completed_by": user}  # fmt: skip


def test_tasks_carry_the_exact_image_and_the_models_answer(queue: Path, cells: list[Path]) -> None:
    tasks, classes = export_tasks(queue)
    assert classes == CLASSES and len(tasks) == 3
    first = tasks[0]
    mime, encoded = first["data"]["image"].split(";base64,")
    assert mime == "data:image/png" and base64.b64decode(encoded) == cells[0].read_bytes()
    assert first["data"]["sha256"] == sha256_bytes(cells[0].read_bytes())
    (prediction,) = first["predictions"]
    assert prediction["model_version"] == "elpv-defects v3" and prediction["score"] == pytest.approx(0.55)
    assert prediction["result"] == [
        {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": ["defective"]}}
    ]
    assert tasks[2]["data"]["model_reason"] == LABEL_SUSPECTED and tasks[2]["data"]["given_label"] == "functional"
    config = labeling_config(classes)
    for name in [*CLASSES, INVALID]:
        assert f'<Choice value="{name}"' in config
    assert f'name="{FROM_NAME}" toName="{TO_NAME}"' in config and 'value="$image"' in config


def test_an_export_in_the_documented_format_lands_in_the_drop(queue: Path, tmp_path: Path) -> None:
    tasks, _ = export_tasks(queue)
    exported = [
        # relabelled twice: the later annotation decides
        annotate(tasks[0], 1, annotation("functional", "2026-11-24T10:01:00Z"), annotation("defective", "2026-11-24T10:05:00Z", user={"id": 7, "email": "ann@example.com"})),  # noqa: E501
        annotate(tasks[1], 2, annotation("functional", "2026-11-24T10:02:00Z", cancelled=True)),  # skipped
        annotate(tasks[2], 3, annotation(INVALID, "2026-11-24T10:03:00Z")),
        annotate(tasks[2], 4, annotation(None, "2026-11-24T10:04:00Z")),  # submitted with no choice
        annotate(tasks[1], 5),  # never annotated
    ]  # fmt: skip
    imported = read_export(exported, CLASSES)
    assert imported.skipped == 3 and [label.label for _, label in imported.labels] == ["defective", INVALID]
    payload, label = imported.labels[0]
    assert label.image_sha256 == sha256_bytes(payload) == tasks[0]["data"]["sha256"]
    assert label.who == "ann@example.com" and label.when == "2026-11-24T10:05:00Z" and label.source == LABEL_STUDIO
    assert (label.model_version, label.model_decision, label.model_reason) == ("3", "review", NEAR_THRESHOLD)
    assert imported.labels[1][1].who == "label-studio-user-7"
    # The command writes them into the data drop, and says what it skipped.
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(exported))
    drop = tmp_path / "data" / "raw" / "elpv-reviewed"
    args = [*REVIEW, "import", str(export_file), "--drop", str(drop), "-c", "functional", "-c", "defective"]
    result = run_tool(args, tmp_path)
    assert "2 label(s)" in result.stderr and "3 task(s) skipped" in result.stderr
    assert [path.read_bytes() for path in (drop / "defective").iterdir()] == [payload]
    assert not (drop / "functional").exists()  # the invalid image is in no class folder
    assert [row.label for row in DataDrop(drop, CLASSES).rows()] == ["defective", INVALID]


def test_bad_exports_name_the_task_and_write_nothing(queue: Path, tmp_path: Path) -> None:
    tasks, _ = export_tasks(queue)
    good = annotate(tasks[0], 1, annotation("defective", "2026-11-24T10:01:00Z"))
    unknown = annotate(tasks[1], 2, annotation("cracked", "2026-11-24T10:01:00Z"))
    with pytest.raises(DataError, match=r"task 2: 'cracked' is not one of .*--classes"):
        read_export([good, unknown], CLASSES)
    elsewhere = copy.deepcopy(good)
    elsewhere["data"]["image"] = "/data/local-files/?d=review/cell.png"
    with pytest.raises(DataError, match="task 1: its image is not inline"):
        read_export([elsewhere], CLASSES)
    tampered = copy.deepcopy(good)
    tampered["data"]["sha256"] = "0" * 64
    with pytest.raises(DataError, match="does not match its sha256"):
        read_export([tampered], CLASSES)
    with pytest.raises(DataError, match="not JSON_MIN or CSV"):
        read_export({"tasks": []}, CLASSES)
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps([good, unknown]))
    drop = tmp_path / "drop"
    args = [*REVIEW, "import", str(export_file), "--drop", str(drop), "-c", "functional", "-c", "defective"]
    failed = run_tool(args, tmp_path, check=False)
    assert failed.returncode == 2 and "'cracked' is not one of" in failed.stdout + failed.stderr
    assert not drop.exists() or not any(drop.rglob("*.png"))
    export_file.write_text("{not json")
    broken = run_tool(args, tmp_path, check=False)
    assert broken.returncode == 2 and "is not JSON" in broken.stdout + broken.stderr


def test_export_writes_tasks_and_config_and_an_empty_queue_is_an_error(queue: Path, tmp_path: Path) -> None:
    out = tmp_path / "ls" / "tasks.json"
    result = run_tool([*REVIEW, "export", str(queue), "-o", str(out)], tmp_path)
    assert "3 task(s)" in result.stderr
    assert len(json.loads(out.read_text())) == 3 and "<Choices" in out.with_suffix(".xml").read_text()
    (tmp_path / "empty").mkdir()
    empty = run_tool([*REVIEW, "export", str(tmp_path / "empty"), "-o", str(out)], tmp_path, check=False)
    assert empty.returncode == 2 and "holds no queued images" in empty.stdout + empty.stderr


@pytest.fixture
def label_studio(tmp_path: Path) -> Iterator[str]:
    """A real Label Studio on loopback with an empty database; its URL."""
    binary = LS_VENV / "bin" / "label-studio"
    if not binary.is_file():
        pytest.skip(f"no Label Studio at {LS_VENV}: `make label-studio` creates it (or set LABEL_STUDIO_VENV)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path / "label-studio"
    env = {**os.environ, "LABEL_STUDIO_BASE_DATA_DIR": str(data), "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}
    args = [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data), "--username", "reviewer@example.com", "--password", "reviewer-password",
            "--user-token", LS_TOKEN, "--enable-legacy-api-token"]  # fmt: skip
    log = (tmp_path / "label-studio.log").open("w")
    server = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # the first start migrates a new database
        while True:
            if server.poll() is not None:
                raise AssertionError(
                    f"Label Studio exited {server.returncode}: {(tmp_path / 'label-studio.log').read_text()[-3000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("Label Studio did not start within 240 s") from None
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_a_real_label_studio_round_trip_lands_in_the_drop(label_studio: str, queue: Path, tmp_path: Path) -> None:
    """Our tasks and config into a real Label Studio, annotated through its API (one relabel, one
    confirmation, one skip), its own JSON export back through `transferkit review import`."""
    tasks_file = tmp_path / "ls" / "tasks.json"
    run_tool([*REVIEW, "export", str(queue), "-o", str(tasks_file)], tmp_path)
    exported = tmp_path / "ls" / "export.json"
    driver = [str(LS_VENV / "bin" / "python"), str(REPO / "tests" / "label_studio_roundtrip.py"), label_studio,
              LS_TOKEN, str(tasks_file.with_suffix(".xml")), str(tasks_file), str(exported)]  # fmt: skip
    run_tool([*driver, "functional", "defective", "-"], tmp_path, timeout=300)
    drop = tmp_path / "drop"
    args = [*REVIEW, "import", str(exported), "--drop", str(drop), "-c", "functional", "-c", "defective"]
    result = run_tool(args, tmp_path)
    assert "2 label(s)" in result.stderr and "1 task(s) skipped" in result.stderr
    sent = json.loads(tasks_file.read_text())
    rows = DataDrop(drop, CLASSES).rows()
    assert [(row.image_sha256, row.label) for row in rows] == [
        (sent[0]["data"]["sha256"], "functional"),
        (sent[1]["data"]["sha256"], "defective"),
    ]
    assert {row.source for row in rows} == {LABEL_STUDIO} and rows[0].model_version == "3"
    assert (drop / "functional" / f"{sent[0]['data']['sha256']}.png").read_bytes() == base64.b64decode(
        sent[0]["data"]["image"].split(";base64,")[1]
    )
    # Label Studio kept the model's answer as each task's prediction (its export lists their ids).
    assert [len(task["predictions"]) for task in json.loads(exported.read_text())] == [1, 1, 1]
