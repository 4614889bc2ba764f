"""What the heatmap output costs on the CPU: the exported graph with and without it, side by side in one run.

The default architecture at the default size (params.yaml: efficientnet_lite0, 300 px) with two
classes and an untrained head (the head's values do not change the work), exported once with
``export_onnx``; then, at one batch size on ONNX Runtime's CPU provider:

- ``without``: the graph cut down to ``logits`` and ``probabilities`` (``onnx.utils.Extractor``),
  what an export without the heatmap would be;
- ``not requested``: the exported graph, asked for ``logits`` and ``probabilities`` only;
- ``heatmap``: the exported graph, every output, the maps at feature-map resolution (10x10);
- ``resized in graph``: the exported graph plus a Resize node (benchmark only, linear,
  half-pixel) that brings the maps to image resolution, requested instead of the small maps;
- ``upsampled on the client``: ``heatmap`` plus what a client does per image with the small maps:
  ``transferkit.heatmap.evidence`` for the positive class and ``transferkit.heatmap.upsample``.

The machines are noisy, so the variants run in paired rounds: each round times every variant
back to back for ``--seconds``, in an order that rotates from round to round, and each ratio to
``without`` is taken within its round; the median ratio and its interquartile range are reported.

    .venv/bin/python benchmarks/heatmap.py [--seconds 1] [--rounds 15] [--batch 8] [--threads 0]

Writes benchmarks/results/heatmap.json and .md.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import helper

from results import write_results
from serving import batches, throughput
from transferkit import heatmap
from transferkit.config import load_params
from transferkit.contract import HEATMAP_OUTPUT, INPUT_NAME, OUTPUT_NAMES
from transferkit.data.elpv import package_data_dir
from transferkit.export.onnx_export import export_onnx
from transferkit.models.classifier import build_classifier
from transferkit.onnx_runtime import CPU, create_session
from transferkit.preprocessing import load_for_model

RESIZED = "heatmap_image"
BASE = "without"
VARIANTS = (BASE, "not requested", "heatmap", "resized in graph", "upsampled on the client")
LABELS = {
    BASE: "(a) without the heatmap (graph cut to logits, probabilities)",
    "not requested": "(a') exported graph, heatmap not requested",
    "heatmap": "(b) heatmap at feature-map resolution",
    "resized in graph": "(c) heatmap resized to image resolution in the graph",
    "upsampled on the client": "(c') (b), then evidence + `heatmap.upsample` per image on the client",
}


def exported_graph(image_size: int) -> onnx.ModelProto:
    """The default classifier, exported as the pipeline exports it (an untrained 2-class head)."""
    params = load_params("params.yaml")
    torch.manual_seed(0)
    model = build_classifier(params.model.architecture, params.model.weights, 2, params.model.dropout).eval()
    meta = {"class_names": ["functional", "defective"], "image_size": image_size, "resize": params.data.resize}
    return onnx.load_from_string(export_onnx(model, image_size, params.export.opset, meta))


def without_heatmap(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with only the contract's outputs and the nodes they need."""
    cut = onnx.utils.Extractor(proto).extract_model([INPUT_NAME], list(OUTPUT_NAMES))
    cut.ir_version = proto.ir_version  # ORT 1.31 loads IR <= 13; the extractor writes onnx's default
    del cut.opset_import[:]
    cut.opset_import.extend(proto.opset_import)
    return cut


def with_resized_heatmap(proto: onnx.ModelProto, image_size: int) -> onnx.ModelProto:
    """The graph plus a linear Resize of the maps to ``image_size`` (half-pixel centres, as Pillow's
    bilinear upsampling in ``heatmap.upsample``), output as ``heatmap_image``."""
    resized = onnx.ModelProto()
    resized.CopyFrom(proto)
    maps = next(o for o in proto.graph.output if o.name == HEATMAP_OUTPUT)
    height = maps.type.tensor_type.shape.dim[2].dim_value
    scale = image_size / height
    graph = resized.graph
    graph.initializer.append(helper.make_tensor("heatmap_scales", onnx.TensorProto.FLOAT, [4], [1, 1, scale, scale]))
    graph.node.append(
        helper.make_node(
            "Resize",
            [HEATMAP_OUTPUT, "", "heatmap_scales"],
            [RESIZED],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        )
    )
    batch, classes = (d.dim_param or d.dim_value for d in maps.type.tensor_type.shape.dim[:2])
    shape = [batch, classes, image_size, image_size]
    graph.output.append(helper.make_tensor_value_info(RESIZED, onnx.TensorProto.FLOAT, shape))
    onnx.checker.check_model(resized, full_check=True)
    return resized


def client_upsampled(maps: np.ndarray, image_size: int) -> list[np.ndarray]:
    """What a client does with the small maps: each image's evidence for the positive class at image size."""
    return [heatmap.upsample(heatmap.evidence(m, [1]), (image_size, image_size)) for m in maps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=15, help="paired rounds (median ratio reported)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: every core)")
    args = parser.parse_args()
    data = load_params("params.yaml").data
    size = data.image_size
    full = exported_graph(size)
    maps_info = next(o for o in full.graph.output if o.name == HEATMAP_OUTPUT)
    sessions = {
        "cut": create_session(without_heatmap(full).SerializeToString(), [CPU], args.threads),
        "full": create_session(full.SerializeToString(), [CPU], args.threads),
        "resized": create_session(with_resized_heatmap(full, size).SerializeToString(), [CPU], args.threads),
    }
    files = sorted((package_data_dir() / "images").glob("*.png"))[:64]
    images = np.stack([load_for_model(f, size, data.resize) for f in files])

    def runner(session: str, outputs: list[str], client: bool = False) -> Callable[[np.ndarray], int]:
        def run(batch: np.ndarray) -> int:
            results = sessions[session].run(outputs, {INPUT_NAME: batch})
            if client:
                client_upsampled(results[-1], size)
            return len(batch)

        return run

    contract = list(OUTPUT_NAMES)
    runs = {
        BASE: runner("cut", contract),
        "not requested": runner("full", contract),
        "heatmap": runner("full", [*contract, HEATMAP_OUTPUT]),
        "resized in graph": runner("resized", [*contract, RESIZED]),
        "upsampled on the client": runner("full", [*contract, HEATMAP_OUTPUT], client=True),
    }
    # The in-graph Resize and the client's Pillow upsampling draw the same map (both are linear).
    probe = images[: args.batch]
    small, large = (
        sessions[s].run([o], {INPUT_NAME: probe})[0] for s, o in (("full", HEATMAP_OUTPUT), ("resized", RESIZED))
    )
    agreement = max(
        float(np.abs(heatmap.evidence(big, [1]) - client).max())
        for big, client in zip(large, client_upsampled(small, size), strict=True)
    )

    supply = batches(images, args.batch)
    raw: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for round_ in range(args.rounds):
        shift = round_ % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            raw[name].append(throughput(lambda run=runs[name]: run(supply()), args.seconds))
    median = {name: round(statistics.median(values), 1) for name, values in raw.items()}
    cost = {
        name: np.percentile(np.divide(raw[BASE], raw[name]), [25, 50, 75]).round(3).tolist() for name in VARIANTS[1:]
    }
    result = {
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "batch": args.batch,
        "image_size": size,
        "heatmap_shape": [d.dim_value for d in maps_info.type.tensor_type.shape.dim[1:]],
        "img_per_s": median,
        "time_over_without": {name: q[1] for name, q in cost.items()},
        "time_over_without_iqr": {name: [q[0], q[2]] for name, q in cost.items()},
        "resize_vs_client_max_abs_diff": agreement,
        "rounds": raw,
        "seconds": args.seconds,
    }
    lines = [
        f"| batch {args.batch}, {size} px, CPU | img/s (median) | time / without (median of paired rounds; IQR) |",
        "|---|---|---|",
        f"| {LABELS[BASE]} | {median[BASE]} | 1 |",
        *(
            f"| {LABELS[name]} | {median[name]} | {cost[name][1]:.3f}x ({cost[name][0]:.3f}-{cost[name][2]:.3f}) |"
            for name in VARIANTS[1:]
        ),
    ]
    write_results("heatmap", result, lines)


if __name__ == "__main__":
    main()
