"""CPU the server's monitor thread spends per image: counts and drift alone, and with its files.

A throughput ratio on a shared 2-core machine moves by several percent from run to run; the
monitor thread's own CPU time (user + system, from /proc) does not, and it is what monitoring
takes from serving. Real ELPV cells are handed to a real monitor as requests hand them, one at a
time, half decided "review" (the default rule reviews about half of ELPV's test cells), so half
also go to the review queue; the prediction log gets every one.

    .venv/bin/python benchmarks/monitor_cpu.py [--model models/export/model.onnx]

Writes benchmarks/results/monitor_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from results import write_results
from transferkit.data.elpv import package_data_dir
from transferkit.serving.metrics import ServerMetrics
from transferkit.serving.model_source import load_model, source_from
from transferkit.serving.monitor import Monitor
from transferkit.serving.onnx_model import Prediction
from transferkit.serving.settings import load_settings


def thread_cpu_s(native_id: int) -> float:
    """User + system CPU seconds of one thread of this process."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_image_ms(model: Path, monitor_dir: Path | None, payloads: list[bytes], count: int) -> float:
    settings = load_settings(model=str(model), monitor_dir=monitor_dir, max_batch_size=1, reload_interval_s=0)
    served = load_model(source_from(settings), settings)
    monitor = Monitor(settings, ServerMetrics(), "bench")
    monitor.serve(served)
    monitor.start()
    names = served.classifier.class_names
    for index in range(count):
        review = index % 2 == 1
        prediction = Prediction(
            names[-1], dict.fromkeys(names, 1 / len(names)), "review" if review else "pass", None, float(index)
        )
        monitor.observe(served, [prediction], payloads=[(f"{index}.png", payloads[index % len(payloads)])])
        time.sleep(0.002)  # one request at a time, as a served stream hands them
    while monitor.summary()["pending"]:
        time.sleep(0.01)
    spent = thread_cpu_s(monitor._thread.native_id)
    monitor.stop()
    return spent / count * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/export/model.onnx"))
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    payloads = [path.read_bytes() for path in sorted((package_data_dir() / "images").glob("*.png"))[:64]]
    with tempfile.TemporaryDirectory(prefix="transferkit-bench-monitor-") as folder:
        result = {
            "images": args.images,
            "counts_and_drift_ms_per_image": per_image_ms(args.model, None, payloads, args.images),
            "with_files_ms_per_image": per_image_ms(args.model, Path(folder), payloads, args.images),
        }
    lines = [
        f"Monitor thread CPU per image ({args.images} ELPV cells, half to review), {os.cpu_count()} CPUs:",
        "",
        "| monitoring | CPU ms per image |",
        "|---|---:|",
        f"| counts and drift | {result['counts_and_drift_ms_per_image']:.3f} |",
        f"| plus prediction log and review queue | {result['with_files_ms_per_image']:.3f} |",
    ]
    write_results("monitor_cpu", result, lines)


if __name__ == "__main__":
    main()
