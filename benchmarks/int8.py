"""int8 vs fp32 on the CPU, side by side in one run: raw ONNX Runtime, served, and test accuracy.

Exports the pipeline's trained model (models/train/model.pt) twice through the export stage,
fp32 and int8 (params.yaml's export settings), into a temp folder; then, on real ELPV cells,
raw ONNX Runtime img/s at batch 1/8/32 and a real `transferkit serve` of each model under load.
Accuracy and the drop come from the export's own verification on the test split.

The machines are noisy (the same graph reads 90-160 img/s from one minute to the next), so the
raw ratio is paired: many short rounds, fp32 and int8 back to back in alternating order, and
the ratio of each round; the median ratio and its interquartile range are reported.

    .venv/bin/python benchmarks/int8.py [--seconds 1] [--rounds 15] [--threads 0]

Writes benchmarks/results/int8.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from results import write_results
from serving import batches, load, start_server, throughput
from transferkit.config import load_params
from transferkit.data.elpv import package_data_dir
from transferkit.preprocessing import load_for_model
from transferkit.serving.onnx_model import OnnxClassifier
from transferkit.stages import export

SIZES = (1, 8, 32)
PRECISIONS = ("fp32", "int8")


def export_each(folder: Path, precisions: tuple[str, ...] = PRECISIONS) -> dict[str, dict]:
    """The export stage at each precision; returns its report (model path, size, verification)."""
    reports = {}
    for precision in precisions:
        out = folder / precision
        overrides = {
            "export.precision": precision,
            "paths.export": str(out),
            "paths.export_report": str(out / "report.json"),
        }
        reports[precision] = export.run(load_params("params.yaml", overrides))
    return reports


def images_done(model: OnnxClassifier, supply: Callable[[], np.ndarray]) -> int:
    return len(model.run(supply())[0])


def quartiles(values: np.ndarray) -> list[float]:
    return np.percentile(values, [25, 50, 75]).round(2).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per raw measurement")
    parser.add_argument("--rounds", type=int, default=15, help="paired rounds (median ratio reported)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: every core)")
    parser.add_argument("--serve-seconds", type=float, default=8.0)
    args = parser.parse_args()
    files = sorted((package_data_dir() / "images").glob("*.png"))[:64]
    with tempfile.TemporaryDirectory() as tmp:
        reports = export_each(Path(tmp))
        models = {p: OnnxClassifier(reports[p]["model"], device="cpu", threads=args.threads) for p in PRECISIONS}
        size = models["fp32"].image_size
        images = np.stack([load_for_model(f, size, models["fp32"].resize) for f in files])
        raw: dict[str, dict[int, list[float]]] = {p: {s: [] for s in SIZES} for p in PRECISIONS}
        for round_ in range(args.rounds):
            for batch in SIZES:
                for precision in PRECISIONS if round_ % 2 == 0 else PRECISIONS[::-1]:
                    work = partial(images_done, models[precision], batches(images, batch))
                    raw[precision][batch].append(throughput(work, args.seconds))
        payloads = [f.read_bytes() for f in files]
        served = {}
        for precision in PRECISIONS:
            server, url = start_server(Path(reports[precision]["model"]), "cpu", 8)
            try:
                served[precision] = {c: asyncio.run(load(url, payloads, c, args.serve_seconds)) for c in (1, 8, 32)}
            finally:
                server.terminate()
                server.wait(timeout=60)
    median = {p: {s: round(statistics.median(v), 1) for s, v in raw[p].items()} for p in PRECISIONS}
    ratios = {s: quartiles(np.divide(raw["int8"][s], raw["fp32"][s])) for s in SIZES}
    result = {
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "raw_img_per_s": median,
        "raw_rounds": raw,
        "int8_over_fp32": {s: ratios[s][1] for s in SIZES},
        "int8_over_fp32_iqr": {s: [ratios[s][0], ratios[s][2]] for s in SIZES},
        "served": served,
        "verification": {p: reports[p]["parity"] for p in PRECISIONS},
        "size_bytes": {p: reports[p]["size_bytes"] for p in PRECISIONS},
    }
    int8_check = reports["int8"]["parity"]
    lines = [
        "| | fp32 | int8 | int8 / fp32 (median of paired rounds; IQR) |",
        "|---|---|---|---|",
        *(
            f"| raw ORT, batch {s} (img/s, median) | {median['fp32'][s]} | {median['int8'][s]} | "
            f"{ratios[s][1]}x ({ratios[s][0]}-{ratios[s][2]}) |"
            for s in SIZES
        ),
        *(
            f"| served, {c} clients (req/s) | {served['fp32'][c]['requests_per_s']:.1f} | "
            f"{served['int8'][c]['requests_per_s']:.1f} | "
            f"{served['int8'][c]['requests_per_s'] / served['fp32'][c]['requests_per_s']:.2f}x |"
            for c in (1, 8, 32)
        ),
        f"| test accuracy | {int8_check['torch_accuracy']:.4f} | {int8_check['onnx_accuracy']:.4f} | "
        f"drop {int8_check['accuracy_drop'] * 100:.2f} points (macro-F1 {int8_check['macro_f1_drop'] * 100:.2f}) |",
        f"| size (MB) | {result['size_bytes']['fp32'] / 1e6:.1f} | {result['size_bytes']['int8'] / 1e6:.1f} | |",
    ]
    write_results("int8", result, lines)


if __name__ == "__main__":
    main()
