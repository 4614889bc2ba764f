"""Training throughput: the default feature-cache path vs a naive full fine-tune, plus data loading.

All methods run on the same real ELPV images, interleaved round by round in one process so the
ratios are measured side by side on a noisy machine; the median round is reported.

    .venv/bin/python benchmarks/train_throughput.py [--image-size 224] [--rounds 3]

Writes benchmarks/results/train_throughput.json and .md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from results import write_results
from transferkit.config import Params, load_params
from transferkit.data.elpv import package_data_dir
from transferkit.models.classifier import build_classifier
from transferkit.preprocessing import load_for_model
from transferkit.stages.common import configure_threads
from transferkit.training.augment import augment_batch, build_transform
from transferkit.training.compute import Compute
from transferkit.training.feature_cache import onnx_trunk, torch_trunk, trunk_onnx
from transferkit.training.loop import Trainer
from transferkit.training.strategies import cut_index


def images_per_second(work: Callable[[], int], repeats: int) -> float:
    """Run ``work`` (returns images processed) ``repeats`` times after one warm-up call."""
    work()
    started, count = time.perf_counter(), 0
    for _ in range(repeats):
        count += work()
    return count / (time.perf_counter() - started)


def train_steps(trainer: Trainer, inputs: torch.Tensor, labels: torch.Tensor) -> Callable[[], int]:
    trainer.model.train()

    def step() -> int:
        trainer.train_step(inputs, labels)
        return len(labels)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="the pipeline's params (train section is used)")
    parser.add_argument("--image-size", type=int, default=None, help="default: data.image_size from --params")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    params: Params = load_params(args.params)
    args.image_size = args.image_size or params.data.image_size

    threads = configure_threads(0)
    defaults = params.train.model_copy(update={"device": args.device})
    compute = Compute.from_params(defaults)
    device = compute.device
    files = sorted((package_data_dir() / "images").iterdir())[:256]
    images = torch.from_numpy(np.stack([load_for_model(f, args.image_size, "bilinear") for f in files]))
    batch = images[: args.batch_size]
    labels = torch.randint(0, 2, (args.batch_size,), device=device)

    fast_model = build_classifier("efficientnet_lite0", "imagenet", 2, 0.2)
    cut = cut_index(defaults, fast_model.num_units)
    trunk = (
        onnx_trunk(trunk_onnx(fast_model, cut, args.image_size), threads)
        if device.type == "cpu"
        else torch_trunk(fast_model, cut, compute)
    )
    features = trunk(batch)
    fast = Trainer(fast_model, defaults, cut, compute, steps_per_epoch=10)
    naive_model = build_classifier("efficientnet_lite0", "imagenet", 2, 0.2)
    naive = Trainer(naive_model, defaults.model_copy(update={"frozen_units": 0}), 0, compute, steps_per_epoch=10)

    transform = build_transform(defaults.augment)
    methods: dict[str, Callable[[], int]] = {
        "train_top_on_cached_features": train_steps(fast, features, labels),
        "naive_full_finetune": train_steps(naive, naive_model.trunk(batch, 0), labels),  # cut 0 = normalised
        "cache_frozen_units": lambda: len(trunk(batch)),
        "decode_resize_png": lambda: len([load_for_model(f, args.image_size, "bilinear") for f in files[:64]]),
        "augment_batch": lambda: len(augment_batch(batch, defaults.augment, transform)),
    }
    repeats = {"naive_full_finetune": 2, "cache_frozen_units": 2}
    rounds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, work in methods.items():
            rounds[name].append(images_per_second(work, repeats.get(name, 5)))
    median = {name: statistics.median(values) for name, values in rounds.items()}

    views = defaults.cache_views
    # One epoch of the default path: every image's views cached once (amortised over all epochs
    # of a run), then one top step per image per epoch.
    epochs = defaults.epochs
    amortised = 1 / (1 / median["train_top_on_cached_features"] + views / (epochs * median["cache_frozen_units"]))
    result = {
        "device": device.type,
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "frozen_units": cut,
        "images_per_second": {name: round(value, 1) for name, value in median.items()},
        "all_rounds": {name: [round(v, 1) for v in values] for name, values in rounds.items()},
        "default_path_with_cache_cost_amortised": round(amortised, 1),
        "speedup_top_vs_naive": round(median["train_top_on_cached_features"] / median["naive_full_finetune"], 2),
        "speedup_amortised_vs_naive": round(amortised / median["naive_full_finetune"], 2),
    }
    lines = [
        f"Training throughput, EfficientNet-Lite0 {args.image_size} px, batch {args.batch_size}, "
        f"{device.type} ({threads} threads), median of {args.rounds} interleaved rounds",
        "",
        "| method | img/s |",
        "|---|---|",
        *(f"| {name} | {value:.1f} |" for name, value in median.items()),
        f"| default path incl. cache cost ({views} views over {epochs} epochs) | {amortised:.1f} |",
        "",
        f"Speed-up of the default path over a naive full fine-tune: {result['speedup_top_vs_naive']}x per "
        f"training step, {result['speedup_amortised_vs_naive']}x including the one-off caching.",
    ]
    write_results("train_throughput", result, lines)


if __name__ == "__main__":
    main()
