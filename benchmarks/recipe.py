"""Does the default recipe fit data nobody tuned it for? Presets, small data and calibration.

Runs study grids (train + evaluate per cell, finished cells skipped on rerun) with the project's
params.yaml, changing only ``data.*`` and, for the comparison, ``train.augment.preset``:
- ELPV (the embedded default) at 5 %, 10 % and 100 % of the training split;
- each example dataset (``transferkit data example``) with every preset, ``auto`` included
  (``--datasets`` picks some of them);
- ablations (``--only ablations``): a one-epoch linear probe on ``digits`` (chance: 0.1). (ELPV
  without the EMA needs no run of its own: at 5 % the EMA is off by rule, and the 10 % cells of
  docs/study/no-ema ran the same recipe with the EMA off.)
Seeds 0-2 everywhere. Then a table of 3-seed means: accuracy, macro-F1, ECE before/after the
temperature, and for each dataset the gap between ``auto`` and the best preset.

    PYTHONPATH=benchmarks:. .venv/bin/python benchmarks/recipe.py [--only elpv|examples|ablations] [--seeds 0 1 2]
        [--datasets digits mirror-letters ...]

Writes benchmarks/results/recipe.json and .md; cells live under studies/recipe/ (gitignored).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from results import write_results
from transferkit.config import load_params
from transferkit.data.examples import write_example
from transferkit.study.report import collect
from transferkit.study.runner import run_study

PROJECT = Path(__file__).resolve().parents[1]
ROOT = PROJECT / "studies" / "recipe"
# The digits are 8x8 pixels: 96 px inputs lose nothing and cost a sixth of 224 px (a data.* choice);
# the photo crops and the letters are made at 64 px.
EXAMPLES = {"digits": 96, "digits-any-orientation": 96, "photo-orientation": 64, "mirror-letters": 64}
PRESETS = ("auto", "natural", "orientation_free", "none")


FRACTIONS = [0.05, 0.1, 1.0]


def grid(
    name: str, seeds: list[int], fractions: list[float], overrides: dict[str, Any], strategy: str = "finetune"
) -> list[dict[str, Any]]:
    sets = {
        "study.strategies": [strategy],
        "study.fractions": fractions,
        "study.seeds": seeds,
        "study.four_class": False,
        "study.jobs": 1,
        "study.root": str(ROOT / name),
        "study.overrides": overrides,
    }
    params = load_params(PROJECT / "params.yaml", sets)
    run_study(params)
    results, failures = collect(ROOT / name)
    if failures:
        raise SystemExit(f"{name}: failed cells {failures}")
    return [{**r, "grid": name} for r in results if r["seed"] in seeds and r["fraction"] in fractions]


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str) -> float:
        return round(statistics.fmean(c[key] for c in cells), 4)

    def std(key: str) -> float:
        return round(statistics.stdev(c[key] for c in cells), 4) if len(cells) > 1 else 0.0

    return {
        "seeds": len(cells),
        "preset": cells[0]["augment_preset"],
        **{k: mean(k) for k in ("test_accuracy", "test_macro_f1", "test_ece", "test_ece_uncalibrated")},
        "test_accuracy_std": std("test_accuracy"),
        "train_seconds": mean("train_seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=["elpv", "examples"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", choices=list(EXAMPLES), default=list(EXAMPLES))
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    if args.only in (None, "elpv"):
        cells = grid("elpv", args.seeds, [0.05, 0.1, 1.0], {})
        for fraction in (0.05, 0.1, 1.0):
            rows.append(
                {
                    "dataset": "elpv",
                    "fraction": fraction,
                    "setting": "default",
                    **summarise([c for c in cells if c["fraction"] == fraction]),
                }
            )
    if args.only in (None, "examples"):
        for dataset in args.datasets:
            size = EXAMPLES[dataset]
            raw = ROOT / "data" / dataset
            if not raw.is_dir():
                write_example(dataset, raw)
            for preset in PRESETS:
                overrides = {
                    "data.source": "imagefolder",
                    "data.path": str(raw.relative_to(PROJECT)),
                    "data.image_size": size,
                    "train.augment.preset": preset,
                }
                cells = grid(f"{dataset}-{preset}", args.seeds, [1.0], overrides)
                rows.append({"dataset": dataset, "fraction": 1.0, "setting": f"preset {preset}", **summarise(cells)})
    lines = [
        "| dataset | fraction | setting (preset run) | seeds | accuracy (± std) | macro-F1 "
        "| ECE raw -> calibrated | train s |",
        "|---|---|---|---|---|---|---|---|",
    ] + [
        f"| {r['dataset']} | {r['fraction']:g} | {r['setting']} ({r['preset']}) | {r['seeds']} | "
        f"{r['test_accuracy']:.4f} ± {r['test_accuracy_std']:.4f} | {r['test_macro_f1']:.4f} | "
        f"{r['test_ece_uncalibrated']:.4f} -> {r['test_ece']:.4f} | {r['train_seconds']:.0f} |"
        for r in rows
    ]
    write_results(f"recipe-{args.only}" if args.only else "recipe", {"rows": rows}, lines)


if __name__ == "__main__":
    main()
