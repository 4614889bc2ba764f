"""Suspected label errors into the server's review queue, beside the images production sent there.

The review page (and `transferkit review export`) reads one folder layout, ReviewQueue's: the
image's bytes as they are on disk plus a ``.json`` sidecar. So a suspect is queued through the
same class, with reason "label suspected", and a person sees it next to the served images. An
image already in the queue (same content hash) is not queued twice, so the command can be rerun.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from transferkit.data.cache import PreparedData
from transferkit.errors import DataError
from transferkit.evaluation.label_issues import LabelIssues, suspect_entry
from transferkit.io import read_json, sha256_bytes
from transferkit.serving.monitor_files import SIDECAR, ReviewQueue


@dataclass(frozen=True)
class Queued:
    added: list[Path]  # the queued images, most suspect first
    already: int  # suspects whose image was in the queue already


def queued_hashes(folder: Path) -> set[str]:
    """Content hashes of the images a review folder holds now (from their sidecars)."""
    if not folder.is_dir():
        return set()
    return {read_json(path).get("sha256", "") for path in folder.glob(f"*{SIDECAR}") if not path.name.startswith(".")}


def queue_suspects(
    queue: ReviewQueue, issues: LabelIssues, prepared: PreparedData, data_root: Path, top: int
) -> Queued:
    """Queue the ``top`` most suspect images (fewer if cleanlab found fewer), reading each image's
    original file under ``data_root`` (the raw data the prepared rows name)."""
    present = queued_hashes(queue.folder)
    added, already = [], 0
    time = datetime.now(UTC).isoformat(timespec="microseconds")
    for rank in range(min(top, len(issues.ranked))):
        entry = suspect_entry(issues, rank, prepared, time)
        source = data_root / entry["file"]
        if not source.is_file():
            raise DataError(f"{source} is missing (raw data behind {prepared.root}); `dvc pull` or `dvc checkout` it")
        payload = source.read_bytes()
        if sha256_bytes(payload) in present:
            already += 1
            continue
        added.append(queue.add(payload, entry))
    return Queued(added, already)
