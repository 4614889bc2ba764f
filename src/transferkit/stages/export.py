"""export: ONNX model with in-graph preprocessing and metadata, verified before it is written.

The exported graph runs in ONNX Runtime on every test image and must match the evaluated
PyTorch logits within ``export.parity_tolerance`` with identical argmax and accuracy; only then
are model.onnx and its model card renamed into place, so a failed check leaves the previous
export untouched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transferkit import __version__
from transferkit.config import Params
from transferkit.data.cache import PreparedData
from transferkit.export.model_card import render_model_card
from transferkit.export.onnx_export import INPUT_NAME, check_parity, export_onnx
from transferkit.io import atomic_write, read_json, write_json, write_text
from transferkit.serving.onnx_model import create_session
from transferkit.stages.common import configure_threads, console, main
from transferkit.stages.train import MODEL
from transferkit.training.checkpoint import load_checkpoint, model_from_checkpoint

HEADLINE_METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "roc_auc", "ece", "count")


def model_metadata(meta: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "class_names": meta["class_names"],
        "image_size": meta["image_size"],
        "resize": meta["resize"],
        "input": {"name": INPUT_NAME, "dtype": "uint8", "layout": "NCHW", "channels": "RGB", "range": [0, 255]},
        "outputs": ["logits", "probabilities"],
        "architecture": meta["architecture"],
        "weights": meta["weights"],
        "strategy": meta["strategy"],
        "source": meta["source"],
        "params_hash": meta["params_hash"],
        "data_hash": meta["data_hash"],
        "test_metrics": {key: metrics[key] for key in HEADLINE_METRICS},
        "transferkit_version": __version__,
    }


def onnx_logits(model_bytes: bytes, images: np.ndarray, threads: int, batch_size: int = 64) -> np.ndarray:
    session = create_session(model_bytes, ["CPUExecutionProvider"], threads)
    return np.concatenate(
        [
            session.run(["logits"], {INPUT_NAME: images[i : i + batch_size]})[0]
            for i in range(0, len(images), batch_size)
        ]
    )


def run(params: Params) -> dict[str, Any]:
    threads = configure_threads(params.train.num_threads)
    prepared = PreparedData.load(params.paths.prepared)
    payload = load_checkpoint(Path(params.paths.train) / MODEL)
    metrics = read_json(Path(params.paths.evaluate) / "metrics.json")
    metadata = model_metadata(payload["meta"], metrics)
    model_bytes = export_onnx(model_from_checkpoint(payload), prepared.image_size, params.export.opset, metadata)

    test_idx = prepared.indices("test")
    images = prepared.images_chw(test_idx).numpy()
    torch_logits = np.load(params.paths.test_logits)
    parity = check_parity(
        onnx_logits(model_bytes, images, threads),
        torch_logits,
        prepared.labels(test_idx),
        params.export.parity_tolerance,
    )

    out = Path(params.paths.export)
    with atomic_write(out / "model.onnx") as handle:
        handle.write(model_bytes)
    write_text(out / "model_card.md", render_model_card(metadata, metrics, parity.as_dict()))
    report = {"parity": parity.as_dict(), "size_bytes": len(model_bytes), "model": str(out / "model.onnx")}
    write_json(params.paths.export_report, report)
    console.print(
        f"exported {out / 'model.onnx'} ({len(model_bytes) / 1e6:.1f} MB): max |diff| vs PyTorch "
        f"{parity.max_abs_diff:.2e}, argmax agreement {parity.argmax_agreement:.4f}",
        highlight=False,
    )
    return report


if __name__ == "__main__":
    main(run)
