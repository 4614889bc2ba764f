"""How many ELPV training labels cleanlab disputes, and which expert grades they carry.

On the pipeline's outputs (run `dvc repro train` first), what `transferkit review suspects` does:
each training image's out-of-fold probabilities from a 5-fold logistic-regression probe on pooled
embeddings, then cleanlab's ``find_label_issues``. For both embedding networks (the ImageNet
backbone, the default; the fine-tuned checkpoint, a cross-check whose top units saw these labels):
the probe's out-of-fold accuracy and log loss for a few strengths of its L2 penalty, the issue
count at the default strength, the ELPV grade (defect probability 0, 1/3, 2/3, 1) of each suspect
against the split's own grade mix, and how far the two networks agree. Then a check that could
fail: 5 % of the training labels flipped on purpose, how many of them the ImageNet probe finds.
A contact sheet of the top suspects is drawn for a person to look at.

    .venv/bin/python benchmarks/label_issues.py --sheet /tmp/label_issues.png

Writes benchmarks/results/label_issues.json and .md.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import log_loss

from results import write_results
from transferkit.config import load_params
from transferkit.data.cache import PreparedData
from transferkit.data.sources import ELPV_LABELS_FILE
from transferkit.evaluation.label_issues import (
    FEATURES,
    embedding_model,
    find_issues,
    out_of_fold_probabilities,
    split_embeddings,
)
from transferkit.stages.common import configure_threads
from transferkit.training.checkpoint import MODEL
from transferkit.training.compute import Compute

STRENGTHS = (0.01, 0.1, 1.0)  # sklearn's C; 0.1 is the command's default
DEFAULT_C = 0.1
GRADES = {0.0: "0", 1 / 3: "1/3", 2 / 3: "2/3", 1.0: "1"}


def grades(data_root: Path) -> dict[str, str]:
    """ELPV file -> its expert grade (the defect probability labels.csv gives it)."""
    found = {}
    for line in (data_root / ELPV_LABELS_FILE).read_text().splitlines():
        if line.strip():
            file, probability = line.split()[:2]
            found[file] = next(name for level, name in GRADES.items() if abs(float(probability) - level) < 1e-3)
    return found


def contact_sheet(path: Path, prepared: PreparedData, issues: Any, grade_of: dict[str, str], count: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = issues.ranked[:count]
    columns = 6
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.6, rows * 3.0))
    names = prepared.class_names
    for axis in axes.flat:
        axis.axis("off")
    for rank, (axis, position) in enumerate(zip(axes.flat, shown, strict=False), start=1):
        index = int(issues.indices[position])
        file = prepared.rows[index]["file"]
        axis.imshow(prepared.images[index].squeeze(), cmap="gray", vmin=0, vmax=255)
        given = names[int(issues.labels[position])]
        axis.set_title(
            f"#{rank} {Path(file).stem}\ngiven {given} (grade {grade_of[file]})\n"
            f"p({given}) = {issues.self_confidence(position):.2f}",
            fontsize=8,
        )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=70)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sheet", type=Path, help="draw the top suspects (ImageNet probe) into this PNG")
    parser.add_argument("--sheet-count", type=int, default=30)
    parser.add_argument("--flip-fraction", type=float, default=0.05)
    args = parser.parse_args()
    params = load_params("params.yaml")
    configure_threads(params.train.num_threads)
    prepared = PreparedData.load(params.paths.prepared)
    grade_of = grades(Path(params.data.path))
    compute = Compute.from_params(params.train)
    seed = params.data.seed
    result: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "folds": 5,
        "default_C": DEFAULT_C,
        "features": {},
    }
    ranked_files: dict[str, list[str]] = {}
    for features in FEATURES:
        model, version = embedding_model(
            features, Path(params.paths.train) / MODEL, params.model.architecture, len(prepared.class_names)
        )
        started = time.perf_counter()
        indices, embeddings = split_embeddings(prepared, model, "train", compute, params.evaluate.batch_size)
        embed_s = time.perf_counter() - started
        labels = prepared.labels(indices)
        probes = {}
        for strength in STRENGTHS:
            started = time.perf_counter()
            pred_probs = out_of_fold_probabilities(embeddings, labels, 5, seed, strength)
            probes[str(strength)] = {
                "accuracy": float((pred_probs.argmax(1) == labels).mean()),
                "log_loss": float(log_loss(labels, pred_probs)),
                "seconds": round(time.perf_counter() - started, 2),
            }
        started = time.perf_counter()
        issues = find_issues(indices, labels, embeddings, features, version, 5, seed, DEFAULT_C)
        files = [prepared.rows[int(issues.indices[p])]["file"] for p in issues.ranked]
        ranked_files[features] = files
        split_grades = Counter(grade_of[prepared.rows[int(i)]["file"]] for i in indices)
        suspect_grades = Counter(grade_of[file] for file in files)
        result["features"][features] = {
            "model_version": version,
            "train_images": len(indices),
            "embed_seconds": round(embed_s, 1),
            "probe_and_cleanlab_seconds": round(time.perf_counter() - started, 2),
            "probes": probes,
            "issues": len(files),
            "issue_rate": len(files) / len(indices),
            "issues_by_given_label": dict(Counter(prepared.class_names[int(issues.labels[p])] for p in issues.ranked)),
            "suspect_grades": {grade: suspect_grades.get(grade, 0) for grade in GRADES.values()},
            "train_grades": {grade: split_grades.get(grade, 0) for grade in GRADES.values()},
            "top_30": [
                {"file": file, "grade": grade_of[file], "self_confidence": round(issues.self_confidence(p), 4)}
                for file, p in zip(files[:30], issues.ranked[:30], strict=False)
            ],
        }
        if features == "imagenet":
            noisy = labels.copy()
            flipped = np.random.default_rng(seed).choice(len(labels), round(args.flip_fraction * len(labels)), False)
            noisy[flipped] = 1 - noisy[flipped]
            found = set(find_issues(indices, noisy, embeddings, features, version, 5, seed, DEFAULT_C).ranked.tolist())
            caught = len(found & set(flipped.tolist()))
            result["flip_check"] = {
                "flipped": len(flipped),
                "issues": len(found),
                "flipped_found": caught,
                "recall": caught / len(flipped),
                "precision": caught / max(len(found), 1),
            }
            if args.sheet is not None:
                contact_sheet(args.sheet, prepared, issues, grade_of, args.sheet_count)
    both = set(ranked_files["imagenet"]) & set(ranked_files["trained"])
    result["overlap"] = {
        "both": len(both),
        "top_30_both": len(set(ranked_files["imagenet"][:30]) & set(ranked_files["trained"][:30])),
    }
    lines = ["Suspected label errors in ELPV's training split (5-fold probe + cleanlab find_label_issues)", ""]
    lines += [
        "| embeddings | images | probe accuracy (C=0.01 / 0.1 / 1) | log loss at C=0.1 | issues | "
        "suspects' grades 0 / 1/3 / 2/3 / 1 | split's grades | embed s |",
        "|---|---:|---|---:|---:|---|---|---:|",
    ]
    for features, found in result["features"].items():
        accuracy = " / ".join(f"{found['probes'][str(c)]['accuracy']:.3f}" for c in STRENGTHS)
        suspects, split = (" / ".join(map(str, found[key].values())) for key in ("suspect_grades", "train_grades"))
        lines.append(
            f"| {features} | {found['train_images']} | {accuracy} | {found['probes'][str(DEFAULT_C)]['log_loss']:.3f} "
            f"| {found['issues']} ({found['issue_rate']:.1%}) | {suspects} | {split} | {found['embed_seconds']} |"
        )
    flip = result["flip_check"]
    lines += [
        "",
        f"both networks: {result['overlap']['both']} suspects in common ({result['overlap']['top_30_both']} of the "
        "top 30)",
        f"flip check (imagenet): {flip['flipped']} labels flipped, {flip['flipped_found']} found "
        f"(recall {flip['recall']:.2f}) among {flip['issues']} issues (precision {flip['precision']:.2f})",
    ]
    write_results("label_issues", result, lines)


if __name__ == "__main__":
    main()
