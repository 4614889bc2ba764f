"""Property: no body, header or path a client can send makes the server answer 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import png_bytes
from transferkit.serving.app import create_app
from transferkit.serving.settings import load_settings


@pytest.fixture(scope="module")
def client(model_a: Path) -> Iterator[TestClient]:
    app = create_app(load_settings(model=str(model_a), reload_interval_s=0, max_body_bytes=64 * 1024))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


PNG = png_bytes((8, 8))
bodies = st.one_of(
    st.binary(max_size=2048),
    st.binary(max_size=64).map(lambda tail: PNG[: len(PNG) // 2] + tail),  # a real header, garbage pixels
    st.builds(lambda head, tail: head + tail, st.binary(max_size=32), st.just(PNG)),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    ).map(lambda value: json.dumps(value).encode()),
)
content_types = st.sampled_from(
    [
        "image/png",
        "image/jpeg",
        "application/octet-stream",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "application/json",
        "text/plain",
        "",
    ]
)
paths = st.sampled_from(["/v1/predict", "/v1/predict/batch", "/v2/models/model/infer", "/v2/models/model/ready"])
visible_ascii = st.characters(min_codepoint=33, max_codepoint=126)
header_lengths = st.one_of(st.none(), st.integers(-5, 5000).map(str), st.text(visible_ascii, max_size=5))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=paths, body=bodies, content_type=content_types, header_length=header_lengths)
def test_malformed_requests_never_get_5xx(client: TestClient, path, body, content_type, header_length) -> None:
    headers = {"content-type": content_type}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = header_length
    response = client.post(path, content=body, headers=headers)
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert response.json()["error"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tensor=st.fixed_dictionaries(
        {
            "name": st.sampled_from(["images", "x"]),
            "shape": st.lists(st.integers(-2, 70), max_size=5),
            "datatype": st.sampled_from(["UINT8", "FP32", "BYTES", "uint8"]),
        },
        optional={
            "data": st.lists(st.integers(-300, 300) | st.text(max_size=2), max_size=20),
            "parameters": st.dictionaries(st.sampled_from(["binary_data_size", "x"]), st.integers(-2, 50)),
        },
    )
)
def test_malformed_v2_tensors_never_get_5xx(client: TestClient, tensor: dict) -> None:
    response = client.post("/v2/models/model/infer", json={"inputs": [tensor]})
    assert response.status_code < 500, (response.status_code, response.text)
