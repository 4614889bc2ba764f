"""Serving memory: RSS of a real `transferkit serve --device cpu` through bad input, load and reloads.

For each server configuration, side by side in one run: idle RSS after start; after a battery of
malformed and oversized inputs; after a 64-client load of real ELPV cells; after 24 forced hot
reloads alternating two 224 px models; and after a last load. Throughput of the load phases is
recorded too, so a memory setting that costs speed shows it.

    .venv/bin/python benchmarks/serving_memory.py [--seconds 8]

Writes benchmarks/results/serving_memory.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch
from PIL import Image

from results import write_results
from serving import free_port, load
from transferkit.contract import HEADLINE_METRICS, model_metadata
from transferkit.data.elpv import package_data_dir
from transferkit.export.onnx_export import export_onnx
from transferkit.models.classifier import build_classifier
from transferkit.serving.client import ServingClient

TOKEN = "memory-benchmark"
CONFIGS: dict[str, dict[str, str]] = {
    f"cpu_arena={arena}": {"TRANSFERKIT_SERVE_CPU_ARENA": arena} for arena in ("private", "shared", "off")
}


def export_224(path: Path, seed: int) -> Path:
    """ImageNet Lite0 with a seeded head at the default 224 px, with full metadata."""
    torch.manual_seed(seed)
    model = build_classifier("efficientnet_lite0", "imagenet", num_classes=2, dropout=0.2).eval()
    meta = {
        "class_names": ["functional", "defective"],
        "image_size": 224,
        "resize": "bilinear",
        "architecture": "efficientnet_lite0",
        "weights": "imagenet",
        "strategy": "linear",
        "augment_preset": "orientation_free",
        "calibration": {"method": "none", "temperature": 1.0, "val_nll_before": 0.7, "val_nll_after": 0.7},
        "source": "elpv",
        "params_hash": f"seed{seed}",
        "data_hash": "benchmark",
    }
    metrics = dict.fromkeys(HEADLINE_METRICS, 0.5)
    path.write_bytes(export_onnx(model, 224, 17, model_metadata(meta, metrics, "fp32")))
    return path


def bad_inputs() -> list[tuple[str, bytes]]:
    """Malformed and oversized bodies: each must get a 4xx and leave nothing behind."""
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (4000, 4000, 3), dtype=np.uint8)).save(big, "PNG")
    cell = next((package_data_dir() / "images").glob("*.png")).read_bytes()
    return [
        ("image/png", b""),
        ("image/png", cell[: len(cell) // 3]),
        ("image/png", b"not an image at all"),
        ("text/plain", b"hello"),
        ("image/png", big.getvalue()),  # 16 MP: decoded, resized, then answered
        ("image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 4096),
    ]


def rss_mb(process: psutil.Process) -> float:
    return round(process.memory_info().rss / 2**20, 1)


def measure(config: dict[str, str], models: tuple[Path, Path], payloads: list[bytes], seconds: float) -> dict:
    served = models[0].with_name("served.onnx")
    shutil.copy(models[0], served)
    port = free_port()
    env = {**os.environ, **config, "TRANSFERKIT_ADMIN_TOKEN": TOKEN}
    args = ["serve", "--model", str(served), "--device", "cpu", "--port", str(port), "--reload-interval-s", "0"]
    server = psutil.Popen(["transferkit", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    result: dict[str, Any] = {}
    try:
        with ServingClient(url) as client:
            client.wait_until_ready(120, server)
        time.sleep(1)
        result["idle_after_start_mb"] = rss_mb(server)
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(3):
                for content_type, body in bad_inputs():
                    http.post("/v1/predict", content=body, headers={"content-type": content_type})
            result["after_bad_inputs_mb"] = rss_mb(server)
            result["load_64_clients"] = asyncio.run(load(url, payloads, 64, seconds))
            result["after_load_mb"] = rss_mb(server)
            reload_rss = []
            for index in range(24):
                shutil.copy(models[(index + 1) % 2], served)
                response = http.post("/admin/reload", headers={"authorization": f"Bearer {TOKEN}"})
                response.raise_for_status()
                reload_rss.append(rss_mb(server))
            result["during_reloads_mb"] = [min(reload_rss), max(reload_rss)]
            result["after_reloads_mb"] = reload_rss[-1]
            result["load_64_clients_again"] = asyncio.run(load(url, payloads, 64, seconds))
            time.sleep(2)
            result["steady_state_mb"] = rss_mb(server)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of each 64-client load")
    args = parser.parse_args()
    payloads = [p.read_bytes() for p in sorted((package_data_dir() / "images").glob("*.png"))[:64]]
    with tempfile.TemporaryDirectory() as tmp:
        models = (export_224(Path(tmp) / "a.onnx", 0), export_224(Path(tmp) / "b.onnx", 1))
        results = {name: measure(config, models, payloads, args.seconds) for name, config in CONFIGS.items()}
    lines = [
        "| server | idle | after bad input | after load | reloads (min-max) | steady state | req/s (64 clients) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        low, high = r["during_reloads_mb"]
        lines.append(
            f"| {name} | {r['idle_after_start_mb']} MB | {r['after_bad_inputs_mb']} MB | {r['after_load_mb']} MB "
            f"| {low}-{high} MB | {r['steady_state_mb']} MB | {r['load_64_clients_again']['requests_per_s']:.1f} |"
        )
    write_results("serving_memory", {"cpus": os.cpu_count(), "configs": CONFIGS, "results": results}, lines)


if __name__ == "__main__":
    main()
