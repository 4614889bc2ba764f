"""The study's results store: one small JSON record per finished cell, committed with the code.

Cells take minutes to hours each and the grid is longer than one machine's working day, so the
records (not the models) are what lasts: the params the cell ran with, its metrics, timings, the
machine, and its test predictions (one digit per test image, so the report can recompute every
figure and bootstrap it). A record is named by the cell and a hash of its params and matches a
cell only when it ran with the same params, so a changed recipe never reuses a stale cell, and
records of earlier recipes stay as history.

A param added after a record was written is read at its default: adding a param whose default
keeps the old behaviour (the rule for every new param) must not throw away a grid that took
days. Changing a default, or any recorded value, does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from transferkit.config import Params, parse_params
from transferkit.errors import DataError
from transferkit.io import read_json, write_json

# Sections that do not change what a cell trains or measures, and train.num_threads (cores shared
# between parallel cells). Threads do move a result, as float summation order does: Lite0 at 300 px,
# seed 0 scored 0.8979 on one thread and 0.8948 on two. That is seed-sized noise, which the
# study's seeds already measure, so a cell is not rerun for another thread count.
NOT_IDENTITY = ("paths", "study", "tune", "gate", "export")


def identity(params: Params) -> dict[str, Any]:
    """The params that determine a cell's result, as recorded and compared."""
    raw = params.model_dump(mode="json")
    for section in NOT_IDENTITY:
        raw.pop(section, None)
    raw["train"].pop("num_threads", None)
    return raw


def identity_key(recorded: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:12]


def cell_key(params: Params) -> str:
    return identity_key(identity(params))


@functools.cache
def _default_identity() -> dict[str, Any]:
    """The defaults every record is completed with (read-only: ``_merged`` copies, never mutates)."""
    return identity(parse_params({}))


def ran_with(record: dict[str, Any]) -> dict[str, Any]:
    """The record's params, with params added since it was written at their defaults."""
    return _merged(_default_identity(), record["params"])


def _merged(defaults: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in recorded.items():
        both_sections = isinstance(value, dict) and isinstance(defaults.get(key), dict)
        merged[key] = _merged(defaults[key], value) if both_sections else value
    return merged


def find(records: list[dict[str, Any]], name: str, params: Params) -> dict[str, Any] | None:
    """The record of cell ``name`` that ran with exactly ``params`` (newest first), or None."""
    wanted = identity(params)
    matching = [r for r in records if r["name"] == name and ran_with(r) == wanted]
    return max(matching, key=lambda r: r["finished"], default=None)


def record_path(store: Path, name: str, params: Params) -> Path:
    return store / f"{name}-{cell_key(params)}.json"


def encode_labels(values: np.ndarray) -> str:
    """Class indices as a digit string: 650 test images cost 650 bytes, diffable in git."""
    if values.size and (values.min() < 0 or values.max() > 9):
        raise ValueError("the compact encoding holds classes 0-9; store a list for more classes")
    return "".join(str(int(v)) for v in values)


def decode_labels(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")


def machine() -> dict[str, Any]:
    """Where the cell ran: timings only compare between cells of the same machine."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "node": platform.node(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "commit": commit,
    }


def _cpu_model() -> str:
    """The CPU's model name (``platform.processor()`` is empty on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_records(store: Path) -> list[dict[str, Any]]:
    """Every record in the store, each checked against its own predictions."""
    records = [read_json(path) for path in sorted(store.glob("*.json"))] if store.is_dir() else []
    for record in records:
        verify(record)
    return records


def test_metrics(test: dict[str, str]) -> dict[str, float]:
    """Accuracy and macro-F1 of the encoded test ``labels`` and ``predicted``: the figures a record may claim."""
    labels, predicted = decode_labels(test["labels"]), decode_labels(test["predicted"])
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
    }


def verify(record: dict[str, Any]) -> None:
    """Recompute the record's key and headline figures; a mismatch means a damaged or edited record."""
    if identity_key(record["params"]) != record["key"]:
        raise DataError(
            f"study record {record['name']} has key {record['key']} but its params hash to "
            f"{identity_key(record['params'])}; restore it from git or delete it and rerun the study"
        )
    for key, value in test_metrics(record["test"]).items():
        if abs(record["metrics"][key] - value) > 1e-9:
            raise DataError(
                f"study record {record['name']} says {key} {record['metrics'][key]:.6f} but its predictions "
                f"give {value:.6f}; the record is damaged: restore it from git or delete it and rerun the study"
            )


def write_record(path: Path, record: dict[str, Any]) -> None:
    verify(record)
    write_json(path, record)
