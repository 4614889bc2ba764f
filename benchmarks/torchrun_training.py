"""One process vs two torchrun processes (gloo, CPU) on the end-to-end training path, side by side.

Full ELPV at 64 px, finetune with the feature cache off (the path GPUs take), the same global
batch (32) and epochs; seeds alternate between the two set-ups. Reports the validation score,
throughput, and how far apart the loss curves are: 1 vs 2 processes at the same seed, against
the seed-to-seed spread of single-process runs (the noise that a "match" is judged by).

    PYTHONPATH=benchmarks:. .venv/bin/python benchmarks/torchrun_training.py [--seeds 0 1 2] [--epochs 3]

Writes benchmarks/results/torchrun_training.json and .md.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from results import write_results
from transferkit.config import parse_params, set_dotted
from transferkit.data.elpv import materialize_elpv
from transferkit.io import read_json
from transferkit.stages import prepare

PROJECT = Path(__file__).resolve().parents[1]
CONFIG = {
    "data.image_size": 64,
    "train.strategy": "finetune",
    "train.feature_cache": "off",
    "train.batch_size": 32,
    "train.early_stopping_patience": 100,
}


def write_params(work: Path, name: str, seed: int, epochs: int, threads: int) -> Path:
    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    for key, value in {**CONFIG, "train.seed": seed, "train.epochs": epochs, "train.num_threads": threads}.items():
        set_dotted(raw, key, value)
    raw["data"]["path"] = str(work / "elpv")
    raw["paths"] = {key: str(work / "shared" / value) for key, value in raw["paths"].items()}
    for key in ("train", "checkpoints", "train_reports"):
        raw["paths"][key] = str(work / name / key)
    file = work / f"{name}.yaml"
    file.write_text(yaml.safe_dump(parse_params(raw).model_dump(mode="json"), sort_keys=False))
    return file


def train(work: Path, processes: int, seed: int, epochs: int) -> dict[str, Any]:
    name = f"p{processes}-s{seed}"
    cores = os.cpu_count() or 1
    params = write_params(work, name, seed, epochs, max(1, cores // processes))
    stage = ["-m", "transferkit.stages.train", "--params", str(params)]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([sys.executable, *launcher, *stage], cwd=PROJECT, env=env, check=True, capture_output=True)
    reports = work / name / "train_reports"
    metrics = read_json(reports / "metrics.json")
    table = reports / "plots" / "metrics" / "train" / "loss.tsv"
    return {
        "processes": processes,
        "seed": seed,
        "val_macro_f1": metrics["val_macro_f1"],
        "val_accuracy": metrics["val_accuracy"],
        "images_per_second": metrics["images_per_second"],
        "train_seconds": metrics["train_seconds"],
        "train_loss": [float(row["loss"]) for row in csv.DictReader(table.open(), delimiter="\t")],
    }


def gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        materialize_elpv(work / "elpv")
        prepare.run(parse_params(yaml.safe_load(write_params(work, "prepare", 0, 1, 0).read_text())))
        runs = [train(work, processes, seed, args.epochs) for seed in args.seeds for processes in (1, 2)]
    by = {(r["processes"], r["seed"]): r for r in runs}
    same_seed = [gap(by[1, s]["train_loss"], by[2, s]["train_loss"]) for s in args.seeds]
    pairs = itertools.combinations(args.seeds, 2)
    across_seeds = [gap(by[1, a]["train_loss"], by[1, b]["train_loss"]) for a, b in pairs]

    def mean(processes: int, key: str) -> float:
        return round(statistics.mean(by[processes, s][key] for s in args.seeds), 4)

    result = {
        "config": CONFIG | {"train.epochs": args.epochs, "images": "ELPV (all)"},
        "seeds": args.seeds,
        "one_process": {key: mean(1, key) for key in ("val_macro_f1", "val_accuracy", "images_per_second")},
        "two_processes": {key: mean(2, key) for key in ("val_macro_f1", "val_accuracy", "images_per_second")},
        "throughput_ratio": round(mean(2, "images_per_second") / mean(1, "images_per_second"), 3),
        "loss_gap_1_vs_2_same_seed": [round(g, 4) for g in same_seed],
        "loss_gap_across_seeds_1_process": [round(g, 4) for g in across_seeds],
        "runs": runs,
    }
    one, two = result["one_process"], result["two_processes"]
    lines = [
        f"| ELPV 64 px, finetune end to end, {args.epochs} epochs, global batch 32, seeds {args.seeds} "
        "| 1 process | 2 processes (gloo) |",
        "|---|---|---|",
        f"| val macro-F1 (mean) | {one['val_macro_f1']} | {two['val_macro_f1']} |",
        f"| val accuracy (mean) | {one['val_accuracy']} | {two['val_accuracy']} |",
        f"| training images/s (mean) | {one['images_per_second']} | {two['images_per_second']} |",
        f"| largest per-epoch train-loss gap, 1 vs 2 processes, same seed | - | {max(same_seed):.4f} |",
        f"| largest per-epoch train-loss gap between seeds, 1 process | {max(across_seeds):.4f} | - |",
    ]
    write_results("torchrun_training", result, lines)


if __name__ == "__main__":
    main()
