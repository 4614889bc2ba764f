"""Label Studio, for teams that label there: the review queue out as tasks, an export back as labels.

Out: one task per queued image (``transferkit review export``), with the model's answer as a
pre-annotation (``predictions``), so the person confirms or corrects it, and a labeling config
(image + one choice per class, plus "not a valid image"). The image travels inside the task as a
``data:`` URL: Label Studio shows it with no storage to set up, no local-files serving
(``LOCAL_FILES_SERVING_ENABLED`` and a document root on the Label Studio machine) and no network,
and its JSON export carries the task data back verbatim, so the import has the exact bytes (checked
against their hash) even after the queue dropped them.

Back: Label Studio's JSON export (a list of tasks with ``annotations[].result[].value.choices``,
https://labelstud.io/guide/export#Label-Studio-JSON-format-of-annotated-tasks) becomes one
``Label`` per task for the data drop. Cancelled (skipped) and empty annotations are not labels and
are counted; a task with several is decided by its latest. Every task is checked before anything
is written, so a bad export writes nothing.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from transferkit.errors import DataError
from transferkit.io import read_json, sha256_bytes
from transferkit.review_drop import INVALID, LABEL_STUDIO, Label
from transferkit.serving.monitor_files import SIDECAR

FROM_NAME, TO_NAME = "label", "image"  # the labeling config's control and object names
HOTKEYS = "123456789"


def labeling_config(class_names: list[str]) -> str:
    """Label Studio's XML for an image and one choice per class (keys 1..9), plus INVALID."""
    choices = [
        f"    <Choice value={quoteattr(name)}" + (f' hotkey="{HOTKEYS[i]}"' if i < len(HOTKEYS) else "") + "/>"
        for i, name in enumerate(class_names)
    ]
    choices.append(f'    <Choice value={quoteattr(INVALID)} hotkey="0"/>')
    return "\n".join(
        [
            "<View>",
            f'  <Image name="{TO_NAME}" value="$image" zoom="true"/>',
            '  <Header value="$reason" size="5"/>',
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true" required="true">',
            *choices,
            "  </Choices>",
            "</View>",
        ]
    )


def queue_entries(folder: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The review folder's (image, sidecar) pairs, oldest first, as ReviewQueue leaves them."""
    if not folder.is_dir():
        raise DataError(f"review queue folder not found: {folder}; point at the server's <monitor_dir>/review")
    entries = []
    for sidecar in sorted(folder.glob(f"*{SIDECAR}")):
        if sidecar.name.startswith("."):  # an atomic write's temp file
            continue
        outputs = read_json(sidecar)
        image = folder / str(outputs.get("image", ""))
        if image.is_file():  # a sidecar without its image was evicted under us: not a task any more
            entries.append((image, outputs))
    return entries


def task(image: Path, outputs: dict[str, Any]) -> dict[str, Any]:
    """One Label Studio task: the image inline, what the model said as a pre-annotation."""
    payload = image.read_bytes()
    mime = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
    label, probabilities = outputs["label"], outputs.get("probabilities", {})
    model = outputs.get("model") or {}
    version = None if model.get("version") is None else str(model["version"])
    return {
        "data": {
            "image": f"data:{mime};base64,{base64.b64encode(payload).decode()}",
            "sha256": sha256_bytes(payload),
            "queue_file": image.name,
            "reason": f"{outputs.get('decision') or 'review'}: {outputs.get('reason') or 'no reason given'}",
            "model_name": model.get("name"),
            "model_version": version,
            "model_decision": outputs.get("decision"),
            "model_reason": outputs.get("reason"),
            "given_label": outputs.get("given_label"),
        },
        "predictions": [
            {
                "model_version": f"{model.get('name', 'model')} v{version}",
                "score": float(probabilities.get(label, 0.0)),
                "result": [
                    {"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [label]}}
                ],
            }
        ],
    }


def export_tasks(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Tasks for every queued image, and the class names (from the sidecars' probabilities)."""
    entries = queue_entries(folder)
    if not entries:
        raise DataError(f"{folder} holds no queued images (an image plus its {SIDECAR} sidecar)")
    classes = list(entries[0][1].get("probabilities", {}))
    for image, outputs in entries:
        if list(outputs.get("probabilities", {})) != classes:
            raise DataError(
                f"{image.name} was classified over {list(outputs.get('probabilities', {}))}, the first image over "
                f"{classes}: export the images of one model at a time"
            )
    return [task(image, outputs) for image, outputs in entries], classes


@dataclass(frozen=True)
class Imported:
    labels: list[tuple[bytes, Label]]  # (the image's bytes, its label), in the export's order
    skipped: int  # tasks with no usable annotation: every one cancelled, or no choice made


def _choice(annotation: dict[str, Any]) -> str | None:
    """The choice an annotation made in the config's control, None if it made none."""
    for region in annotation.get("result") or []:
        if region.get("type") == "choices" and region.get("from_name", FROM_NAME) == FROM_NAME:
            choices = (region.get("value") or {}).get("choices") or []
            if len(choices) > 1:
                raise DataError(f"annotation {annotation.get('id')} chose {choices}: the config allows one choice")
            if choices:
                return str(choices[0])
    return None


def _who(annotation: dict[str, Any]) -> str:
    """Who labelled: the e-mail when the export carries it, else Label Studio's user id."""
    person = annotation.get("completed_by")
    if isinstance(person, dict):
        return str(person.get("email") or f"label-studio-user-{person.get('id')}")
    return f"label-studio-user-{person}"


def _image(task: dict[str, Any], where: str) -> bytes:
    data = task.get("data") or {}
    url = data.get("image")
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise DataError(
            f"{where}: its image is not inline ({str(url)[:60]!r}); import only tasks that "
            "`transferkit review export` wrote (their data.image is a data: URL)"
        )
    try:
        payload = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{where}: its data.image is not valid base64; export the task again") from None
    expected = data.get("sha256")
    if expected is not None and sha256_bytes(payload) != expected:
        raise DataError(f"{where}: its image does not match its sha256 {expected[:12]}…; export the task again")
    return payload


def read_export(tasks: Any, class_names: list[str]) -> Imported:
    """Labels from a parsed Label Studio JSON export; raises (naming the task) on anything unusable."""
    if not isinstance(tasks, list):
        raise DataError(
            "expected Label Studio's JSON export (a list of tasks); export the project as JSON, not JSON_MIN or CSV"
        )
    allowed = [*class_names, INVALID]
    labels, skipped = [], 0
    for number, item in enumerate(tasks, start=1):
        where = f"task {item.get('id', f'#{number}')}" if isinstance(item, dict) else f"item #{number}"
        if not isinstance(item, dict):
            raise DataError(f"{where} is not a task object")
        made = [
            (annotation, choice)
            for annotation in item.get("annotations") or []
            if not annotation.get("was_cancelled") and (choice := _choice(annotation)) is not None
        ]
        if not made:
            skipped += 1
            continue
        annotation, choice = max(made, key=lambda pair: str(pair[0].get("updated_at") or pair[0].get("created_at")))
        if choice not in allowed:
            raise DataError(f"{where}: {choice!r} is not one of {allowed}; pass the model's classes with --classes")
        payload = _image(item, where)
        data = item["data"]
        labels.append(
            (
                payload,
                Label(
                    image_sha256=sha256_bytes(payload),
                    label=choice,
                    who=_who(annotation),
                    when=str(annotation.get("updated_at") or annotation.get("created_at")),
                    model_version=data.get("model_version"),
                    model_decision=data.get("model_decision"),
                    model_reason=data.get("model_reason"),
                    source=LABEL_STUDIO,
                ),
            )
        )
    return Imported(labels, skipped)


def load_export(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"Label Studio export not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not JSON ({error}); export the project from Label Studio as JSON") from None
