"""The exported model's contract: tensor names and the metadata every consumer reads.

Separate from the exporter so that readers (the server, ``transferkit predict``) need onnx but
not torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx

INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probabilities")
METADATA_PREFIX = "transferkit."


def read_metadata(proto_or_path: onnx.ModelProto | str | Path) -> dict[str, Any]:
    """The transferkit metadata of an exported model, JSON values decoded."""
    proto = proto_or_path if isinstance(proto_or_path, onnx.ModelProto) else onnx.load(str(proto_or_path))
    decoded = {}
    for entry in proto.metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            try:
                decoded[entry.key[len(METADATA_PREFIX) :]] = json.loads(entry.value)
            except json.JSONDecodeError:
                decoded[entry.key[len(METADATA_PREFIX) :]] = entry.value
    return decoded
