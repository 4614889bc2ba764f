"""A Triton model repository and a KServe ``InferenceService`` for an exported model.

The same ONNX file and contract as ``transferkit serve``: Triton's ``onnxruntime_onnx`` backend
runs it unchanged (uint8 ``images`` in, fp32 ``logits``/``probabilities`` out), and the model's
transferkit metadata travels as Triton model parameters. The ``config.pbtxt`` is written as
protobuf text here (a few fixed fields), so exporting needs no Triton package; the tests parse it
with Triton's own ``model_config.proto`` schema.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx
import yaml

from transferkit.contract import INPUT_NAME, METADATA_PREFIX, OUTPUT_NAMES, read_metadata
from transferkit.errors import ExportError
from transferkit.io import atomic_write, sha256_file

ONNX_TO_TRITON = {
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.INT64: "TYPE_INT64",  # the decision
}
CONFIG = "config.pbtxt"
MANIFEST = "inferenceservice.yaml"


@dataclass(frozen=True)
class TritonOptions:
    """Serving knobs of the generated config (Triton's names)."""

    max_batch_size: int = 32
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 2000
    instance_kind: str = "gpu"  # gpu | cpu
    instances: int = 1


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str
    dims: tuple[int, ...]  # without the batch dimension
    # A per-sample scalar (the decision, shape (batch,)): Triton declares dims [1] and reshapes to [].
    scalar: bool = False


def model_tensors(model: onnx.ModelProto) -> tuple[Tensor, list[Tensor]]:
    """The ``images`` input and every output (the contract's two first, then the optional ones),
    with Triton types and per-sample dims; refuses a graph that breaks the transferkit contract
    (Triton would fail later and less clearly)."""

    def tensor(value: onnx.ValueInfoProto) -> Tensor:
        kind = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
        if kind.elem_type in ONNX_TO_TRITON and len(dims) == 1:
            return Tensor(value.name, ONNX_TO_TRITON[kind.elem_type], (1,), scalar=True)
        if kind.elem_type not in ONNX_TO_TRITON or len(dims) < 2 or any(d <= 0 for d in dims[1:]):
            raise ExportError(
                f"{value.name}: Triton needs a known element type and fixed per-sample dims, got "
                f"{onnx.TensorProto.DataType.Name(kind.elem_type)} {dims}; export the model with transferkit"
            )
        return Tensor(value.name, ONNX_TO_TRITON[kind.elem_type], tuple(dims[1:]))

    inputs = {value.name: tensor(value) for value in model.graph.input}
    outputs = {value.name: tensor(value) for value in model.graph.output}
    if INPUT_NAME not in inputs or not set(OUTPUT_NAMES) <= set(outputs):
        raise ExportError(
            f"not a transferkit model: expected input {INPUT_NAME!r} and outputs {list(OUTPUT_NAMES)}, "
            f"got {list(inputs)} and {list(outputs)}"
        )
    optional = [tensor for name, tensor in outputs.items() if name not in OUTPUT_NAMES]
    return inputs[INPUT_NAME], [outputs[name] for name in OUTPUT_NAMES] + optional


def _quote(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid protobuf text-format string


def config_pbtxt(name: str, model: onnx.ModelProto, options: TritonOptions) -> str:
    """Triton's model configuration for ``model`` (protobuf text format)."""
    images, outputs = model_tensors(model)
    preferred = options.preferred_batch_sizes
    if options.max_batch_size < 1 or any(not 1 <= size <= options.max_batch_size for size in preferred):
        raise ExportError(
            f"preferred batch sizes {list(options.preferred_batch_sizes)} must lie in 1..max_batch_size "
            f"({options.max_batch_size})"
        )

    def io_block(tensor: Tensor) -> str:
        dims = ", ".join(map(str, tensor.dims))
        reshape = "\n    reshape: { shape: [ ] }" if tensor.scalar else ""
        name = _quote(tensor.name)
        return f"  {{\n    name: {name}\n    data_type: {tensor.data_type}\n    dims: [ {dims} ]{reshape}\n  }}"

    instance = f"count: {options.instances}\n    kind: KIND_{options.instance_kind.upper()}"
    if options.instance_kind == "gpu":
        instance += "\n    gpus: [ 0 ]"
    parameters = "\n".join(
        f"parameters {{\n  key: {_quote(METADATA_PREFIX + key)}\n"
        f"  value: {{ string_value: {_quote(json.dumps(value))} }}\n}}"
        for key, value in sorted(read_metadata(model).items())
    )
    return "\n".join(
        [
            f"name: {_quote(name)}",
            'platform: "onnxruntime_onnx"',
            f"max_batch_size: {options.max_batch_size}",
            "input [\n" + io_block(images) + "\n]",
            "output [\n" + ",\n".join(io_block(t) for t in outputs) + "\n]",
            "dynamic_batching {",
            f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
            f"  max_queue_delay_microseconds: {options.max_queue_delay_us}",
            "}",
            f"instance_group [\n  {{\n    {instance}\n  }}\n]",
            parameters,
            "",
        ]
    )


def inference_service(name: str, storage_uri: str, gpu: bool) -> dict[str, object]:
    """A KServe ``InferenceService`` serving the repository with the Open Inference Protocol (v2)."""
    model: dict[str, object] = {
        "modelFormat": {"name": "onnx"},
        "protocolVersion": "v2",
        "storageUri": storage_uri,
    }
    if gpu:
        model["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63] or "transferkit"},
        "spec": {"predictor": {"model": model}},
    }


def export_triton(
    model_path: Path, repository: Path, name: str, version: int, storage_uri: str, options: TritonOptions
) -> dict[str, Path]:
    """Write ``<repository>/<name>/config.pbtxt``, ``<repository>/<name>/<version>/model.onnx`` and
    ``<repository>/inferenceservice.yaml``; returns them by role.

    Every file is written by rename. A version folder that already holds a different model is
    refused rather than overwritten: a served version never changes under its clients.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ExportError(f"model name {name!r}: use letters, digits, '_', '-' and '.' (it is a folder name)")
    if version < 1:
        raise ExportError(f"Triton versions are positive integers, got {version}")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as error:  # onnx raises OSError, protobuf's DecodeError, ...: all mean 'not a model'
        raise ExportError(f"cannot read {model_path} as an ONNX model: {error}") from None
    config = config_pbtxt(name, model, options)
    target = repository / name / str(version) / "model.onnx"
    if target.is_file() and sha256_file(target) != sha256_file(model_path):
        raise ExportError(
            f"{target} already holds a different model; export with another --triton-version (Triton serves "
            "the highest) or another --model-name"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target) as handle, model_path.open("rb") as source:
        shutil.copyfileobj(source, handle)
    with atomic_write(repository / name / CONFIG, "w") as handle:
        handle.write(config)
    manifest = repository / MANIFEST
    with atomic_write(manifest, "w") as handle:
        yaml.safe_dump(inference_service(name, storage_uri, options.instance_kind == "gpu"), handle, sort_keys=False)
    return {"config": repository / name / CONFIG, "model": target, "manifest": manifest}
