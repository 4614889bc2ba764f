"""export: ONNX model with in-graph preprocessing and metadata, verified before it is written.

The exported graph runs in ONNX Runtime on every test image and must match the exact fp32
PyTorch logits that evaluate saved (whatever precision evaluation ran at) within
``export.parity_tolerance`` (``export.fp16_parity_tolerance`` for an fp16 export); only then
are model.onnx and its model card renamed into place, so a failed check leaves the previous
export untouched. fp16 models run on the CPU provider too, which is how CI verifies them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transferkit.config import Params
from transferkit.data.cache import PreparedData
from transferkit.export.contract import INPUT_NAME, OUTPUT_NAMES, model_metadata
from transferkit.export.model_card import render_model_card
from transferkit.export.onnx_export import check_parity, export_onnx
from transferkit.io import atomic_write, read_json, write_json, write_text
from transferkit.onnx_runtime import CPU, create_session
from transferkit.stages.common import configure_threads, console, main
from transferkit.training.checkpoint import MODEL, load_checkpoint, model_from_checkpoint


def onnx_logits(model_bytes: bytes, images: np.ndarray, threads: int, batch_size: int = 64) -> np.ndarray:
    session = create_session(model_bytes, [CPU], threads)
    return np.concatenate(
        [
            session.run([OUTPUT_NAMES[0]], {INPUT_NAME: images[i : i + batch_size]})[0]
            for i in range(0, len(images), batch_size)
        ]
    )


def run(params: Params) -> dict[str, Any]:
    threads = configure_threads(params.train.num_threads)
    prepared = PreparedData.load(params.paths.prepared)
    payload = load_checkpoint(Path(params.paths.train) / MODEL)
    metrics = read_json(Path(params.paths.evaluate) / "metrics.json")
    precision = params.export.precision
    metadata = model_metadata(payload["meta"], metrics, precision)
    model_bytes = export_onnx(
        model_from_checkpoint(payload), prepared.image_size, params.export.opset, metadata, precision
    )

    test_idx = prepared.indices("test")
    images = prepared.images_chw(test_idx).numpy()
    torch_logits = np.load(params.paths.test_logits)
    parity = check_parity(
        onnx_logits(model_bytes, images, threads),
        torch_logits,
        prepared.labels(test_idx),
        params.export.fp16_parity_tolerance if precision == "fp16" else params.export.parity_tolerance,
    )

    out = Path(params.paths.export)
    with atomic_write(out / "model.onnx") as handle:
        handle.write(model_bytes)
    write_text(out / "model_card.md", render_model_card(metadata, metrics, parity.as_dict()))
    report = {
        "parity": parity.as_dict(),
        "precision": precision,
        "size_bytes": len(model_bytes),
        "model": str(out / "model.onnx"),
    }
    write_json(params.paths.export_report, report)
    console.print(
        f"exported {out / 'model.onnx'} ({precision}, {len(model_bytes) / 1e6:.1f} MB): max |diff| vs PyTorch "
        f"{parity.max_abs_diff:.2e}, argmax agreement {parity.argmax_agreement:.4f}",
        highlight=False,
    )
    return report


if __name__ == "__main__":
    main(run)
