"""Drive a real Label Studio through label-studio-sdk, as a team would: create the project from our
labeling config, import our tasks, annotate each one (or skip it), export the project as JSON.

Run by tests/test_label_studio.py with Label Studio's own python (its venv has the SDK, ours need
not): ``python label_studio_roundtrip.py URL TOKEN CONFIG.xml TASKS.json OUT.json CHOICE...``, one
CHOICE per task in import order, ``-`` to skip (cancel) that task.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from label_studio_sdk import LabelStudio


def main() -> None:
    url, token, config, tasks, out, *choices = sys.argv[1:]
    client = LabelStudio(base_url=url, api_key=token)
    project = client.projects.create(title="transferkit review", label_config=Path(config).read_text())
    client.projects.import_tasks(id=project.id, request=json.loads(Path(tasks).read_text()))
    imported = sorted(client.tasks.list(project=project.id), key=lambda task: task.id)
    if len(imported) != len(choices):
        raise SystemExit(f"Label Studio holds {len(imported)} tasks, {len(choices)} choices given")
    for task, choice in zip(imported, choices, strict=True):
        if choice == "-":
            client.annotations.create(id=task.id, result=[], was_cancelled=True)
        else:
            region = {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}
            client.annotations.create(id=task.id, result=[region], was_cancelled=False)
    export = client.projects.exports.download_sync(project.id, export_type="JSON", download_all_tasks=True)
    Path(out).write_bytes(b"".join(export))


if __name__ == "__main__":
    main()
