"""prepare: raw images -> decoded, resized uint8 cache + manifest + split + data report.

Unreadable, corrupt or empty files are skipped and listed in the report; an empty class or
dataset is an error. Exact duplicates stay together in one split. The report's warnings (tiny
classes, imbalance, duplicates) are printed before anything trains.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from transferkit.config import Params
from transferkit.data.cache import images_hash, manifest_hash, write_prepared
from transferkit.data.report import ImageInfo, build_report, render_markdown
from transferkit.data.reviewed import REVIEWED_GROUP, list_reviewed, split_of_new
from transferkit.data.sources import Sample, list_samples
from transferkit.data.split import SPLITS, assign_splits
from transferkit.errors import DataError
from transferkit.io import sha256_bytes, write_json, write_text
from transferkit.preprocessing import decode_image, is_grayscale, to_model_input
from transferkit.stages.common import console, main

# (HWC uint8, sha256, grayscale, (width, height, mode) on disk) or a skip reason
Decoded = tuple[np.ndarray, str, bool, tuple[int, int, str]] | str


def _decode(path: Path, size: int, resize: str) -> Decoded:
    try:
        data = path.read_bytes()
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    if not data:
        return "empty file (0 bytes)"
    try:
        image = decode_image(data)
    except DataError as error:
        return str(error).replace("image bytes", "corrupt image")
    found = (image.width, image.height, image.mode)
    return to_model_input(image, size, resize), sha256_bytes(data), is_grayscale(image), found


def _decode_all(paths: list[Path], size: int, resize: str, desc: str) -> list[Decoded]:
    with ThreadPoolExecutor() as pool:
        return list(
            tqdm(
                pool.map(lambda path: _decode(path, size, resize), paths),
                total=len(paths),
                desc=desc,
                unit="img",
                dynamic_ncols=True,
            )
        )


def add_reviewed(
    params: Params, class_names: list[str], kept: list[tuple[Sample, Decoded]], splits: list[str]
) -> dict[str, Any]:
    """Merge the reviewed drops (data/reviewed.py) into ``kept`` and ``splits`` in place; what they changed."""
    root = Path(params.paths.reviewed)
    reviewed = list_reviewed(root, class_names)
    if not reviewed:
        return {}
    data = params.data
    decoded = _decode_all([r.path for r in reviewed], data.image_size, data.resize, "decode reviewed")
    index_of = {d[1]: i for i, (_, d) in enumerate(kept)}
    summary: dict[str, Any] = {"drops": sorted({r.drop for r in reviewed}), "added": 0, "relabelled": 0}
    summary |= {"in_test_ignored": 0, "unreadable": []}
    for image, found in zip(reviewed, decoded, strict=True):
        if isinstance(found, str):
            summary["unreadable"].append({"file": str(image.path), "reason": found})
            continue
        known = index_of.get(found[1])
        if known is None:
            sample = Sample(image.path.as_posix(), image.label, REVIEWED_GROUP)
            index_of[found[1]] = len(kept)
            kept.append((sample, found))
            splits.append(split_of_new(found[1], (data.split.train, data.split.val)))
            summary["added"] += 1
        elif splits[known] == "test":
            summary["in_test_ignored"] += 1
        elif kept[known][0].label != image.label:
            kept[known] = (replace(kept[known][0], label=image.label), kept[known][1])
            summary["relabelled"] += 1
    return summary


def run(params: Params) -> dict[str, Any]:
    data = params.data
    samples, class_names = list_samples(data)
    root = Path(data.path)
    decoded = _decode_all([root / s.file for s in samples], data.image_size, data.resize, "decode + resize")
    skipped = [{"file": s.file, "reason": d} for s, d in zip(samples, decoded, strict=True) if isinstance(d, str)]
    kept = [(s, d) for s, d in zip(samples, decoded, strict=True) if not isinstance(d, str)]
    if not kept:
        raise DataError(f"none of the {len(samples)} images under {root} could be decoded")
    counts = Counter(s.label for s, _ in kept)
    empty = [name for name in class_names if counts[name] == 0]
    if empty:
        raise DataError(f"class(es) {empty} have no readable images under {root}; add images or remove the class")

    splits = assign_splits(
        [s.label for s, _ in kept], [s.group for s, _ in kept], [d[1] for _, d in kept], data.split, data.seed
    )
    reviewed = add_reviewed(params, class_names, kept, splits)
    grayscale = all(d[2] for _, d in kept)
    images = np.stack([d[0][..., :1] if grayscale else d[0] for _, d in kept])
    label_index = {name: i for i, name in enumerate(class_names)}
    rows = [
        {
            "index": i,
            "file": s.file,
            "sha256": d[1],
            "label": s.label,
            "label_index": label_index[s.label],
            "group": s.group,
            "split": split,
        }
        for i, ((s, d), split) in enumerate(zip(kept, splits, strict=True))
    ]
    meta = {
        "source": data.source,
        "class_names": class_names,
        "image_size": data.image_size,
        "resize": data.resize,
        "channels": images.shape[-1],
        "count": len(rows),
        "data_hash": manifest_hash(rows),
        "images_sha256": images_hash(images),
        **({"reviewed": reviewed} if reviewed else {}),
    }
    write_prepared(Path(params.paths.prepared), images, rows, meta)
    infos = [ImageInfo(s.file, s.label, split, d[1], *d[3]) for (s, d), split in zip(kept, splits, strict=True)]
    report = {
        **build_report(infos, skipped, class_names, SPLITS),
        "data_hash": meta["data_hash"],
        "groups": dict(sorted(Counter(r["group"] for r in rows).items())),
        **({"reviewed": reviewed} if reviewed else {}),
    }
    write_json(params.paths.data_report, report)
    write_text(params.paths.data_summary, render_markdown(report, SPLITS))
    console.print(
        f"prepared {len(rows)} images ({len(skipped)} skipped) -> {params.paths.prepared}; "
        f"data report: {params.paths.data_summary}"
    )
    if reviewed:
        console.print(
            f"reviewed drops {', '.join(reviewed['drops'])}: {reviewed['added']} images added to train/val, "
            f"{reviewed['relabelled']} relabelled, {reviewed['in_test_ignored']} of the test split left as they are",
            highlight=False,
        )
    for entry in skipped + (reviewed.get("unreadable", []) if reviewed else []):
        console.print(f"[yellow]skipped[/] {entry['file']}: {entry['reason']}", highlight=False)
    for warning in report["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    return report


if __name__ == "__main__":
    main(run)
