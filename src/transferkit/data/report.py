"""The data report a user reads before training: what is in the folder, and what is wrong with it.

Counts per class and split, image sizes and colour modes as found on disk, exact duplicates
(same bytes), class imbalance and skipped files, plus the warnings that change results: a class
too small to learn or to measure, one class dwarfing another, duplicates. prepare prints the
warnings and writes the report as JSON (``paths.data_report``) and markdown
(``paths.data_summary``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# A class with fewer images leaves a handful for validation and test: too few to learn or to measure.
MIN_CLASS_IMAGES = 20
# A larger ratio between the largest and the smallest class: accuracy mostly measures the large one.
MAX_IMBALANCE = 10.0
LISTED = 20  # duplicate groups / skipped files listed in full; the rest are counted


@dataclass(frozen=True)
class ImageInfo:
    """One kept image as found on disk (before any resizing)."""

    file: str
    label: str
    split: str
    sha256: str
    width: int
    height: int
    mode: str


def _sizes(images: Sequence[ImageInfo]) -> dict[str, Any]:
    sizes = Counter((i.width, i.height) for i in images)
    areas = sorted(sizes, key=lambda wh: wh[0] * wh[1])
    return {
        "smallest": list(areas[0]),
        "largest": list(areas[-1]),
        "distinct": len(sizes),
        "most_common": [{"width": w, "height": h, "count": n} for (w, h), n in sizes.most_common(5)],
    }


def _duplicates(images: Sequence[ImageInfo]) -> dict[str, Any]:
    by_content: dict[str, list[ImageInfo]] = defaultdict(list)
    for image in images:
        by_content[image.sha256].append(image)
    groups = [group for group in by_content.values() if len(group) > 1]
    conflicting = [group for group in groups if len({i.label for i in group}) > 1]
    return {
        "groups": len(groups),
        "files": sum(len(group) for group in groups),
        "conflicting_labels": len(conflicting),
        "examples": [
            [{"file": i.file, "label": i.label, "split": i.split} for i in group]
            for group in (conflicting + [g for g in groups if g not in conflicting])[:LISTED]
        ],
    }


def build_report(
    images: Sequence[ImageInfo], skipped: list[dict[str, str]], class_names: Sequence[str], splits: Sequence[str]
) -> dict[str, Any]:
    per_class = Counter(i.label for i in images)
    counts = {
        split: {name: sum(1 for i in images if i.split == split and i.label == name) for name in class_names}
        for split in splits
    }
    report = {
        "total": len(images),
        "classes": {name: per_class[name] for name in class_names},
        "counts": counts,
        "imbalance_ratio": round(max(per_class.values()) / min(per_class.values()), 2),
        "image_sizes": _sizes(images),
        "colour_modes": dict(Counter(i.mode for i in images).most_common()),
        "duplicates": _duplicates(images),
        "skipped": skipped[:LISTED],
        "skipped_count": len(skipped),
    }
    report["warnings"] = warnings(report)
    return report


def warnings(report: dict[str, Any]) -> list[str]:
    """What a user should fix (or knowingly accept) before trusting a model trained on this data."""
    found = []
    small = {name: n for name, n in report["classes"].items() if n < MIN_CLASS_IMAGES}
    if small:
        found.append(
            f"classes with fewer than {MIN_CLASS_IMAGES} images: {small}; each split gets only a few of them, "
            "so their test metrics are noise. Add images or merge classes."
        )
    if report["imbalance_ratio"] > MAX_IMBALANCE:
        found.append(
            f"the largest class has {report['imbalance_ratio']:g}x the images of the smallest; training weights "
            "classes (train.class_weighting: balanced), but judge the model by macro-F1, not accuracy."
        )
    duplicates = report["duplicates"]
    if duplicates["groups"]:
        found.append(
            f"{duplicates['files']} files are exact duplicates ({duplicates['groups']} groups); each group was kept "
            "in one split so none leaks between train and test, but duplicates weigh double in training."
        )
    if duplicates["conflicting_labels"]:
        found.append(
            f"{duplicates['conflicting_labels']} duplicate groups carry different labels: the same image in two "
            "classes. Fix the labels (see duplicates.examples in the data report)."
        )
    if report["skipped_count"]:
        found.append(f"{report['skipped_count']} files could not be read and were skipped (listed in the report).")
    return found


def render_markdown(report: dict[str, Any], splits: Sequence[str]) -> str:
    names = list(report["classes"])
    table = "\n".join(
        f"| {name} | {report['classes'][name]} | " + " | ".join(str(report["counts"][s][name]) for s in splits) + " |"
        for name in names
    )
    sizes = report["image_sizes"]
    warnings_text = "\n".join(f"- {w}" for w in report["warnings"]) or "- none"
    modes = ", ".join(f"{mode} {count}" for mode, count in report["colour_modes"].items())
    return f"""# Data report

{report["total"]} images in {len(names)} classes; {report["skipped_count"]} skipped.

## Warnings
{warnings_text}

## Images per class and split
| class | total | {" | ".join(splits)} |
|---|---|{"---|" * len(splits)}
{table}

Largest / smallest class: {report["imbalance_ratio"]:g}x.
Image sizes on disk: {sizes["distinct"]} distinct, smallest {sizes["smallest"][0]}x{sizes["smallest"][1]},
largest {sizes["largest"][0]}x{sizes["largest"][1]}. Colour modes: {modes}.
Exact duplicates: {report["duplicates"]["files"]} files in {report["duplicates"]["groups"]} groups
({report["duplicates"]["conflicting_labels"]} with conflicting labels).
"""
