"""The Open Inference Protocol (KServe v2) infer request and response, with the binary tensor extension.

``tritonclient.http`` sends tensors as binary by default (a JSON header of
``Inference-Header-Content-Length`` bytes followed by raw data) and asks for binary outputs
unless told otherwise, so both forms are read and written here; JSON-only clients get JSON.
Every way a request can be wrong becomes an ``InferError`` whose message names the problem.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from transferkit.contract import INPUT_NAME, OUTPUT_NAMES

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"


class InferError(ValueError):
    """The infer request is malformed; the message is returned to the client with a 400."""


class TensorIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: list[Any] | None = None


class OutputRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorIn]
    outputs: list[OutputRequest] | None = None


def parse_infer_request(
    body: bytes,
    header_length: str | None,
    image_shape: tuple[int, ...],
    max_images: int,
    output_names: Sequence[str] = OUTPUT_NAMES,
) -> tuple[InferRequest, np.ndarray]:
    """The request and its ``images`` tensor as uint8 NCHW, checked against the model's input
    contract; the outputs it asks for must be among ``output_names`` (the model's own)."""
    json_part, binary = _split_body(body, header_length)
    try:
        request = InferRequest.model_validate_json(json_part)
    except ValidationError as error:
        first = error.errors(include_url=False)[0]
        where = ".".join(map(str, first["loc"])) or "body"
        raise InferError(f"invalid infer request: {where}: {first['msg']}") from None
    if [tensor.name for tensor in request.inputs] != [INPUT_NAME]:
        names = [tensor.name for tensor in request.inputs]
        raise InferError(f"expected exactly one input named {INPUT_NAME!r}, got {names}")
    tensor = request.inputs[0]
    if tensor.datatype != "UINT8":
        raise InferError(f"input {INPUT_NAME!r} must be UINT8 (RGB pixels 0-255), got {tensor.datatype}")
    if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != image_shape or not 1 <= tensor.shape[0] <= max_images:
        raise InferError(
            f"input {INPUT_NAME!r} must have shape [N, {', '.join(map(str, image_shape))}] with 1 <= N <= "
            f"{max_images}, got {tensor.shape}"
        )
    images = _tensor_data(tensor, binary).reshape(tensor.shape)
    for output in request.outputs or []:
        if output.name not in output_names:
            raise InferError(f"unknown output {output.name!r}; this model has {list(output_names)}")
    return request, images


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        raise InferError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 < length <= len(body):
        raise InferError(f"{HEADER_LENGTH} {length} does not fit a body of {len(body)} bytes")
    return body[:length], body[length:]


def _tensor_data(tensor: TensorIn, binary: bytes) -> np.ndarray:
    count = int(np.prod(tensor.shape))
    size = tensor.parameters.get(BINARY_SIZE)
    if size is not None:
        if size != count or len(binary) != count:
            raise InferError(
                f"input {INPUT_NAME!r}: {BINARY_SIZE} {size} and {len(binary)} binary bytes, "
                f"expected {count} for shape {tensor.shape}"
            )
        return np.frombuffer(binary, dtype=np.uint8)
    if tensor.data is None:
        raise InferError(f"input {INPUT_NAME!r} has neither 'data' nor parameters.{BINARY_SIZE}")
    try:
        values = np.asarray(tensor.data, dtype=np.int64).ravel()
    except (ValueError, TypeError, OverflowError):
        raise InferError(f"input {INPUT_NAME!r}: data must be integers 0-255 (flat or nested by shape)") from None
    if values.size != count:
        raise InferError(f"input {INPUT_NAME!r}: {values.size} values for shape {tensor.shape} ({count} expected)")
    if values.size and (values.min() < 0 or values.max() > 255):
        raise InferError(f"input {INPUT_NAME!r}: values must be 0-255 for UINT8")
    return values.astype(np.uint8)


# ONNX Runtime's output types, as the Open Inference Protocol names them.
V2_DATATYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64"}


def infer_response(
    request: InferRequest, model_name: str, model_version: str, results: dict[str, np.ndarray]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header length for the response header."""
    default_binary = bool(request.parameters.get("binary_data_output", False))
    wanted = request.outputs or [OutputRequest(name=name) for name in results]
    outputs, blobs = [], []
    for output in wanted:
        value = results[output.name]
        datatype = "INT64" if value.dtype == np.int64 else "FP32"
        array = np.ascontiguousarray(value, dtype="<i8" if datatype == "INT64" else "<f4")
        entry: dict[str, Any] = {"name": output.name, "datatype": datatype, "shape": list(array.shape)}
        if output.parameters.get("binary_data", default_binary):
            blob = array.tobytes()
            entry["parameters"] = {BINARY_SIZE: len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outputs}
    if request.id is not None:
        header["id"] = request.id
    header_bytes = json.dumps(header).encode()
    return header_bytes + b"".join(blobs), (len(header_bytes) if blobs else None)
