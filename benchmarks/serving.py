"""Serving throughput and latency: `transferkit serve` under load vs raw ONNX Runtime vs PyTorch eager.

One run measures, on the same real ELPV cells: raw ONNX Runtime at several batch sizes (inputs
already decoded), PyTorch eager on the same model, then a real `transferkit serve` on loopback
driven by an async aiohttp load generator at each concurrency level, four times: with the batch
size the server probes at start-up and monitoring off, the same with monitoring on (counts, drift,
prediction log and review queue in a temp folder), and monitoring on at a fixed max_batch_size
(8) and at 1, with each server's RSS. Raw ORT is measured before and after the servers run and
averaged, so the served/raw ratio is taken side by side on a noisy machine. The load generator
runs on the same machine and takes CPU from the server: the served figures are a lower bound.

    .venv/bin/python benchmarks/serving.py [--duration 10] [--device cpu]

Writes benchmarks/results/serving.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import torch

from results import write_results
from transferkit.data.elpv import package_data_dir
from transferkit.serving.client import ServingClient
from transferkit.serving.onnx_model import OnnxClassifier
from transferkit.training.checkpoint import load_checkpoint, model_from_checkpoint


def throughput(work: Callable[[], int], seconds: float) -> float:
    """Images per second of ``work`` (returns images done) over ``seconds``, after one warm-up call."""
    work()
    started, count = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        count += work()
    return count / (time.perf_counter() - started)


def batches(images: np.ndarray, size: int) -> Callable[[], np.ndarray]:
    """A cycling supplier of ``size``-image batches from ``images``, built before any timing.

    Building them inside the timed loop (``np.take(..., mode="wrap")``) cost 2.7 ms per batch-1
    call on the 2-core CPU, more than an int8 inference, and hid half of int8's speed-up.
    """
    count = len(images)
    built = [images[np.arange(start, start + size) % count] for start in range(0, count, size)]
    return itertools.cycle(built).__next__


def raw_ort(model: Path, device: str, images: np.ndarray, sizes: list[int], seconds: float) -> dict[str, dict]:
    """ORT alone on decoded images: one call using every core, and one single-threaded call per core."""
    cores = os.cpu_count() or 1
    whole = OnnxClassifier(model, device, threads=0)
    single = OnnxClassifier(model, device, threads=1)
    result: dict[str, dict] = {"one_call_all_threads": {}, f"{cores}_calls_1_thread": {}}
    with ThreadPoolExecutor(cores) as pool:
        for size in sizes:
            supply = batches(images, size)

            def one_call(supply: Callable[[], np.ndarray] = supply) -> int:
                return len(whole.run(supply())[0])

            def parallel_calls(supply: Callable[[], np.ndarray] = supply) -> int:
                return sum(len(out[0]) for out in pool.map(single.run, [supply() for _ in range(cores)]))

            result["one_call_all_threads"][size] = throughput(one_call, seconds)
            result[f"{cores}_calls_1_thread"][size] = throughput(parallel_calls, seconds)
    return result


def pytorch_eager(checkpoint: Path, images: np.ndarray, sizes: list[int], seconds: float, device: str) -> dict:
    model = model_from_checkpoint(load_checkpoint(checkpoint)).eval().to(device)
    half = device == "cuda"
    if half:
        model = model.half()
    result = {}
    for size in sizes:
        supply = batches(images, size)

        def work(supply: Callable[[], np.ndarray] = supply) -> int:
            with torch.inference_mode():
                batch = torch.from_numpy(supply()).to(device)
                model(batch).float().cpu()
            return len(batch)

        result[size] = throughput(work, seconds)
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, device: str, options: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [sys.executable, "-m", "transferkit.cli", "serve", "--model", str(model), "--device", device]
    args += ["--port", str(port), "--reload-interval-s", "0", *options]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    with ServingClient(url) as client:
        client.wait_until_ready(120, server)
    return server, url


async def load(url: str, payloads: list[bytes], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` concurrent clients posting images back to back for ``seconds``.

    aiohttp rather than httpx: the generator shares the machine with the server, and aiohttp
    spends several times less CPU per request.
    """
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(60)) as http:

        async def client(index: int, until: float, record: bool) -> None:
            nonlocal errors
            position = index
            while time.perf_counter() < until:
                payload = payloads[position % len(payloads)]
                position += clients
                started = time.perf_counter()
                async with http.post("/v1/predict", data=payload, headers={"content-type": "image/png"}) as response:
                    await response.read()
                if record:
                    latencies.append(time.perf_counter() - started)
                    errors += response.status != 200

        warm_until = time.perf_counter() + min(2.0, seconds / 4)
        await asyncio.gather(*(client(i, warm_until, False) for i in range(clients)))
        started = time.perf_counter()
        await asyncio.gather(*(client(i, started + seconds, True) for i in range(clients)))
        elapsed = time.perf_counter() - started
    values = np.array(latencies) * 1000
    return {
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "errors": errors,
    }


def served(
    model: Path, device: str, options: list[str], payloads: list[bytes], levels: list[int], seconds: float
) -> dict[str, Any]:
    """One server with ``options`` at each client level, the batch size it chose and its peak RSS."""
    server, url = start_server(model, device, options)
    try:
        by_clients = {clients: asyncio.run(load(url, payloads, clients, seconds)) for clients in levels}
        with ServingClient(url) as client:
            batching = client.model()["batching"]
        rss = psutil.Process(server.pid).memory_info().rss / 2**20
        return {"clients": by_clients, "batching": batching, "rss_mb": rss}
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/export/model.onnx"))
    parser.add_argument("--checkpoint", type=Path, default=Path("models/train/model.pt"))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=64, help="distinct real cells to cycle through")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument("--fixed-batch", type=int, default=8, help="a fixed max_batch_size to compare the probe with")
    args = parser.parse_args()

    files = sorted((package_data_dir() / "images").glob("*.png"))[: args.images]
    payloads = [file.read_bytes() for file in files]
    classifier = OnnxClassifier(args.model, args.device)
    started = time.perf_counter()
    images = np.stack([classifier.preprocess(payload) for payload in payloads])
    decode = len(payloads) / (time.perf_counter() - started)

    ort_before = raw_ort(args.model, args.device, images, args.batch_sizes, args.duration)
    eager = pytorch_eager(args.checkpoint, images, args.batch_sizes, args.duration, args.device)
    with tempfile.TemporaryDirectory(prefix="transferkit-bench-monitor-") as monitor_dir:
        on = ["--monitor-dir", monitor_dir]
        configs = {
            "probed, monitoring off": ["--no-monitor"],
            "probed, monitoring on": on,
            f"max batch {args.fixed_batch}, monitoring on": [*on, "--max-batch-size", str(args.fixed_batch)],
            "max batch 1, monitoring on": [*on, "--max-batch-size", "1"],
        }
        servers = {
            name: served(args.model, args.device, options, payloads, args.clients, args.duration)
            for name, options in configs.items()
        }
    ort_after = raw_ort(args.model, args.device, images, args.batch_sizes, args.duration)
    ort = {
        config: {size: (ort_before[config][size] + ort_after[config][size]) / 2 for size in args.batch_sizes}
        for config in ort_before
    }

    best_ort = max(max(by_size.values()) for by_size in ort.values())
    best_eager = max(eager.values())
    off, monitored = servers["probed, monitoring off"], servers["probed, monitoring on"]
    at32 = monitored["clients"].get(32, monitored["clients"][max(monitored["clients"])])

    def cost(clients: int) -> float | None:
        if clients not in off["clients"]:
            return None
        return 1 - monitored["clients"][clients]["requests_per_s"] / off["clients"][clients]["requests_per_s"]

    result: dict[str, Any] = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": args.device},
        "model": str(args.model),
        "image_size": classifier.image_size,
        "duration_s": args.duration,
        "decode_resize_img_per_s": decode,
        "raw_ort_img_per_s": ort,
        "raw_ort_before_after": {"before": ort_before, "after": ort_after},
        "pytorch_eager_img_per_s": eager,
        "served": servers,
        "ratios": {
            "monitoring_throughput_cost_8_clients": cost(8),
            "monitoring_throughput_cost_32_clients": cost(32),
            "monitoring_rss_mb": monitored["rss_mb"] - off["rss_mb"],
            "ort_best_over_eager_best": best_ort / best_eager,
            "served_32_clients_over_raw_ort_best": at32["requests_per_s"] / best_ort,
            "served_32_clients_over_raw_ort_plus_decode": at32["requests_per_s"] * (1 / best_ort + 1 / decode),
        },
    }
    lines = [
        f"Model {args.model} at {classifier.image_size} px on {args.device}, {os.cpu_count()} CPUs; "
        f"{args.duration:.0f} s per measurement.",
        "",
        "| engine | batch 1 | " + " | ".join(f"batch {s}" for s in args.batch_sizes[1:]) + " |",
        "|---|" + "---|" * len(args.batch_sizes),
        *(
            f"| raw ONNX Runtime, {config.replace('_', ' ')}, img/s | "
            + " | ".join(f"{by_size[s]:.1f}" for s in args.batch_sizes)
            + " |"
            for config, by_size in ort.items()
        ),
        "| PyTorch eager, img/s | " + " | ".join(f"{eager[s]:.1f}" for s in args.batch_sizes) + " |",
        "",
        "| server | batch (probe) | RSS MiB | "
        + " | ".join(f"{c} clients: req/s, p50 / p99 ms" for c in args.clients)
        + " |",
        "|---|---|---|" + "---|" * len(args.clients),
    ]
    for name, found in servers.items():
        cells = [
            f"{r['requests_per_s']:.1f}, {r['p50_ms']:.0f} / {r['p99_ms']:.0f}"
            for r in (found["clients"][c] for c in args.clients)
        ]
        rates = found["batching"].get("images_per_second")
        probe = f" ({', '.join(f'{k}: {v:.0f}' for k, v in rates.items())} img/s)" if rates else ""
        lines.append(
            f"| {name} | {found['batching']['max_batch_size']}{probe} | {found['rss_mb']:.0f} | "
            + " | ".join(cells)
            + " |"
        )
    ratios = result["ratios"]
    lines += [
        "",
        "Monitoring on (counts, drift, prediction log, review queue) costs "
        + ", ".join(
            f"{ratios[f'monitoring_throughput_cost_{c}_clients']:.1%} of throughput at {c} clients"
            for c in (8, 32)
            if ratios[f"monitoring_throughput_cost_{c}_clients"] is not None
        )
        + f" and {ratios['monitoring_rss_mb']:.0f} MiB of RSS.",
    ]
    lines += [
        "",
        f"Ratios: best raw ORT / best PyTorch eager = {result['ratios']['ort_best_over_eager_best']:.2f}; "
        f"served at 32 clients (probed, monitoring on) / best raw ORT = "
        f"{result['ratios']['served_32_clients_over_raw_ort_best']:.2f} "
        f"({result['ratios']['served_32_clients_over_raw_ort_plus_decode']:.2f} against ORT plus the decoding it "
        f"does not do). Decode + resize alone: {decode:.0f} img/s on one thread.",
    ]
    write_results("serving", result, lines)


if __name__ == "__main__":
    main()
