"""A real `transferkit serve` on 127.0.0.1: Triton's client, `predict --url`, `explain`, graceful shutdown, the
CLI's errors."""

from __future__ import annotations

import csv
import io
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import yaml
from PIL import Image

from tests.helpers import CLASSES, IMAGE_SIZE, REPO, RULE, run_tool, tool_env
from transferkit.errors import TransferkitError
from transferkit.onnx_runtime import cuda_driver_present
from transferkit.preprocessing import load_for_model
from transferkit.serving.client import ServingClient

TRANSFERKIT = [sys.executable, "-m", "transferkit.cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, *flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    args = [*TRANSFERKIT, "serve", "--model", str(model), "--device", "cpu", "--port", str(port), *flags]
    server = subprocess.Popen(args, env=env or tool_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        with ServingClient(url) as client:
            client.wait_until_ready(120, server)
    except TransferkitError as error:
        server.kill()
        raise AssertionError(f"{error}:\n{server.communicate()[0]}") from None
    return server, url


def stop(server: subprocess.Popen[str]) -> str:
    server.send_signal(signal.SIGTERM)
    output, _ = server.communicate(timeout=60)
    return output


@pytest.fixture(scope="module")
def live(model_a: Path) -> Iterator[str]:
    server, url = start_server(model_a)
    yield url
    stop(server)


def predict_csv(args: list[str]) -> list[dict[str, str]]:
    result = run_tool([*TRANSFERKIT, "predict", *args], cwd=REPO)
    return list(csv.DictReader(io.StringIO(result.stdout)))


def probabilities_of(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(row[f"p_{name}"]) for name in CLASSES] for row in rows])


def decisions_of(rows: list[dict[str, str]]) -> list[str]:
    """What the rule decides on the rows' own (6-decimal) probabilities."""
    return [RULE.names[code] for code in RULE.decide(probabilities_of(rows))]


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_tritonclient_infer_equals_transferkit_predict(live: str, model_a: Path, cells: list[Path], binary: bool):
    client = triton.InferenceServerClient(live.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("model")
    metadata = client.get_model_metadata("model")
    assert metadata["inputs"][0]["shape"] == [-1, 3, IMAGE_SIZE, IMAGE_SIZE]
    images = np.stack([load_for_model(path, IMAGE_SIZE, "bilinear") for path in cells])
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    outputs = None if binary else [triton.InferRequestedOutput("probabilities", binary_data=False)]
    result = client.infer("model", [tensor], outputs=outputs)
    expected = predict_csv([str(model_a), *map(str, cells)])
    assert np.allclose(result.as_numpy("probabilities"), probabilities_of(expected), atol=2e-6)
    assert result.get_response()["model_version"].startswith("sha256:")


def test_predict_url_and_python_client_equal_local_predict(live: str, model_a: Path, cells: list[Path]) -> None:
    broken = cells[0].parent.parent / "broken.png"
    broken.write_bytes(cells[0].read_bytes()[:100])
    files = [*map(str, cells), str(broken)]
    local = predict_csv([str(model_a), *files])
    remote = predict_csv(["--url", live, "--batch-size", "3", *files])
    assert [r["file"] for r in remote] == [r["file"] for r in local] == files
    assert [r["label"] for r in remote] == [r["label"] for r in local]
    assert np.allclose(probabilities_of(remote[:-1]), probabilities_of(local[:-1]), atol=2e-6)
    assert remote[-1]["error"] and local[-1]["error"] and not remote[-1]["label"]
    with ServingClient(live) as client:
        assert client.ready() and client.model()["classes"] == CLASSES
        assert client.predict(cells[0])["label"] == local[0]["label"]


def test_shutdown_drains_in_flight_requests(model_a: Path, cells: list[Path]) -> None:
    server, url = start_server(model_a, "--max-delay-ms", "1500", "--max-batch-size", "64")

    def post(path: Path) -> int:
        return httpx.post(
            url + "/v1/predict", content=path.read_bytes(), headers={"content-type": "image/png"}
        ).status_code

    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(post, path) for path in cells[:4]]
        time.sleep(0.5)  # the requests now wait in the batcher for company
        server.send_signal(signal.SIGTERM)
        statuses = [future.result(timeout=60) for future in pending]
    assert statuses == [200] * 4
    output, _ = server.communicate(timeout=60)
    assert "Application shutdown complete" in output
    assert server.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has drained


def test_serve_refuses_to_start_on_a_bad_model_or_device(tmp_path: Path, model_a: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage")
    result = run_tool([*TRANSFERKIT, "serve", "--model", str(broken), "--port", "1"], REPO, check=False)
    assert result.returncode == 2 and "not a readable ONNX model" in result.stderr
    result = run_tool(
        [*TRANSFERKIT, "serve", "--model", "registry:nothing", "--registry-root", str(tmp_path)], REPO, check=False
    )
    assert result.returncode == 2 and "has no production version" in result.stderr
    if not cuda_driver_present():
        result = run_tool([*TRANSFERKIT, "serve", "--model", str(model_a), "--device", "cuda"], REPO, check=False)
        assert result.returncode == 2 and "no CUDA provider" in result.stderr


def test_predict_writes_the_decision_column_locally_and_through_a_server(
    model_rule: Path, model_a: Path, cells: list[Path]
) -> None:
    """A model with a rule adds `decision` just before `error`, the same from the file and from a
    server; a model without one keeps the old columns exactly."""
    files = list(map(str, cells))
    local = predict_csv([str(model_rule), *files])
    server, url = start_server(model_rule)
    try:
        remote = predict_csv(["--url", url, "--batch-size", "3", *files])
    finally:
        stop(server)
    for rows in (local, remote):
        assert list(rows[0]) == ["file", "label", *(f"p_{name}" for name in CLASSES), "decision", "error"]
        assert [row["decision"] for row in rows] == decisions_of(rows)
    assert [row["decision"] for row in remote] == [row["decision"] for row in local]
    assert list(predict_csv([str(model_a), files[0]])[0]) == ["file", "label", *(f"p_{n}" for n in CLASSES), "error"]


def test_explain_writes_one_overlay_per_readable_image(
    tmp_path: Path, model_rule: Path, model_old: Path, cells: list[Path]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for cell in cells[:3]:
        (images / cell.name).write_bytes(cell.read_bytes())
    (images / "broken.png").write_bytes(cells[0].read_bytes()[:100])
    out = tmp_path / "overlays"
    result = run_tool(
        [*TRANSFERKIT, "explain", str(images), "--out", str(out), "--model", str(model_rule)], REPO, False
    )
    assert result.returncode == 1, result.stderr  # one image skipped, the others drawn
    assert "skipped" in result.stderr and "broken.png" in result.stderr and "3 overlay(s)" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(cell.name for cell in cells[:3])  # no temp files left
    for cell in cells[:3]:
        with Image.open(out / cell.name) as overlay, Image.open(cell) as original:
            assert overlay.format == "PNG" and overlay.size == original.size
    refused = run_tool([*TRANSFERKIT, "explain", str(images), "--out", str(images), "-m", str(model_rule)], REPO, False)
    assert refused.returncode == 2 and "would overwrite the image" in refused.stderr
    assert (images / cells[0].name).read_bytes() == cells[0].read_bytes()
    old = run_tool([*TRANSFERKIT, "explain", str(images), "--out", str(out / "old"), "-m", str(model_old)], REPO, False)
    assert old.returncode == 2 and "no 'heatmap' output" in old.stderr and not (out / "old").exists()


@pytest.mark.parametrize("precision", ["fp32", "int8", "rule"])
def test_downstream_app_stands_alone(precision: str, request: pytest.FixtureRequest, cells: list[Path]) -> None:
    """examples/downstream_app.py with transferkit made unimportable gives `transferkit predict`'s answers,
    for an fp32 and an int8 model alike (same contract), and the decision for a model with a rule."""
    model_a = request.getfixturevalue({"fp32": "model_a", "int8": "model_int8", "rule": "model_rule"}[precision])
    harness = (
        "import runpy, sys\n"
        "sys.modules['transferkit'] = None  # any import of transferkit now fails\n"
        "try:\n    import transferkit\nexcept ImportError:\n    pass\nelse:\n    sys.exit('transferkit importable')\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    files = list(map(str, cells))
    result = run_tool([sys.executable, "-c", harness, "examples/downstream_app.py", str(model_a), *files], REPO)
    standalone = list(csv.DictReader(io.StringIO(result.stdout)))
    expected = predict_csv([str(model_a), *files])
    assert [r["label"] for r in standalone] == [r["label"] for r in expected]
    assert np.allclose(probabilities_of(standalone), probabilities_of(expected), atol=2e-6)
    assert [r.get("decision") for r in standalone] == [r.get("decision") for r in expected]  # None without a rule
    assert ("decision" in standalone[0]) == (precision == "rule")


def test_several_workers_build_their_app_from_the_environment(model_a: Path, cells: list[Path]) -> None:
    server, url = start_server(model_a, "--workers", "2", "--max-batch-size", "4")
    try:
        with ServingClient(url) as client:
            assert client.predict(cells[0])["label"] in CLASSES
            assert client.model()["classes"] == CLASSES
    finally:
        stop(server)


def test_triton_repository_matches_the_model_and_one_client_drives_our_server(
    live: str, model_a: Path, cells: list[Path], tmp_path: Path
) -> None:
    """`export-triton` writes a config Triton's own schema parses, every field agreeing with the ONNX
    model; tritonclient then runs our server knowing nothing but that config."""
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from transferkit.contract import read_metadata

    repo = tmp_path / "triton"
    run_tool(
        [
            *TRANSFERKIT,
            *("export-triton", str(model_a), "--repository", str(repo), "--max-batch-size", "8"),
            *("--preferred-batch-size", "4", "--preferred-batch-size", "8", "--storage-uri", "s3://bucket/triton"),
        ],
        cwd=REPO,
    )
    config = text_format.Parse((repo / "model" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (repo / "model" / "1" / "model.onnx").read_bytes() == model_a.read_bytes()
    graph = onnx.load(str(model_a)).graph
    dtypes = {onnx.TensorProto.UINT8: model_config_pb2.TYPE_UINT8, onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}
    assert (config.name, config.platform, config.max_batch_size) == ("model", "onnxruntime_onnx", 8)
    for declared, actual in [(config.input, graph.input), (config.output, graph.output)]:
        assert [t.name for t in declared] == [v.name for v in actual]
        for tensor, value in zip(declared, actual, strict=True):
            assert tensor.data_type == dtypes[value.type.tensor_type.elem_type]
            assert list(tensor.dims) == [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [g.kind for g in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    metadata = {key.removeprefix("transferkit."): json.loads(p.string_value) for key, p in config.parameters.items()}
    assert metadata == read_metadata(model_a)
    service = yaml.safe_load((repo / "inferenceservice.yaml").read_text())
    assert service["kind"] == "InferenceService"
    assert service["spec"]["predictor"]["model"] == {
        "modelFormat": {"name": "onnx"},
        "protocolVersion": "v2",
        "storageUri": "s3://bucket/triton",
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
    }

    client = triton.InferenceServerClient(live.removeprefix("http://"))
    (images_spec,) = config.input
    batch = config.dynamic_batching.preferred_batch_size[0]
    side = images_spec.dims[-1]
    images = np.stack([load_for_model(path, side, "bilinear") for path in cells[:batch]])
    datatype = model_config_pb2.DataType.Name(images_spec.data_type).removeprefix("TYPE_")
    tensor = triton.InferInput(images_spec.name, [batch, *images_spec.dims], datatype)
    tensor.set_data_from_numpy(images)
    result = client.infer(config.name, [tensor], outputs=[triton.InferRequestedOutput(o.name) for o in config.output])
    for output in config.output:
        assert list(result.as_numpy(output.name).shape) == [batch, *output.dims]
    assert np.allclose(result.as_numpy("probabilities").sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("with_ood", [False, True])
def test_triton_config_carries_the_decision_and_the_heatmap(with_ood: bool, request: pytest.FixtureRequest) -> None:
    """The decision and the OOD score, per-image scalars, are declared [1] and reshaped to []; the
    heatmap and the embedding keep their fixed dims."""
    import onnx
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from transferkit.contract import HEATMAP_OUTPUT, read_metadata
    from transferkit.export.triton import TritonOptions, config_pbtxt

    model_rule = request.getfixturevalue("model_ood" if with_ood else "model_rule")
    text = config_pbtxt("defects", onnx.load(str(model_rule)), TritonOptions())
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    outputs = {output.name: output for output in config.output}
    optional = ["embedding", "ood_score"] if with_ood else []
    assert list(outputs) == ["logits", "probabilities", "decision", "heatmap", *optional]
    if with_ood:
        assert list(outputs["embedding"].dims) == [1280]  # Lite0's pooled features
        assert list(outputs["ood_score"].dims) == [1] and list(outputs["ood_score"].reshape.shape) == []
    assert outputs["decision"].data_type == model_config_pb2.TYPE_INT64
    assert list(outputs["decision"].dims) == [1] and list(outputs["decision"].reshape.shape) == []
    assert outputs["heatmap"].data_type == model_config_pb2.TYPE_FP32
    assert list(outputs["heatmap"].dims) == [len(CLASSES), *read_metadata(model_rule)[HEATMAP_OUTPUT]["shape"]]
    assert json.loads(config.parameters["transferkit.decision"].string_value)["names"] == list(RULE.names)


def test_triton_export_refuses_to_overwrite_a_served_version(model_a: Path, model_b: Path, tmp_path: Path) -> None:
    from transferkit.errors import ExportError
    from transferkit.export.triton import TritonOptions, export_triton

    repo = tmp_path / "triton"
    export_triton(model_a, repo, "defects", 1, "pvc://models/triton", TritonOptions())
    with pytest.raises(ExportError, match="already holds a different model"):
        export_triton(model_b, repo, "defects", 1, "pvc://models/triton", TritonOptions())
    assert (repo / "defects" / "1" / "model.onnx").read_bytes() == model_a.read_bytes()
    export_triton(model_b, repo, "defects", 2, "pvc://models/triton", TritonOptions())  # a new version is fine
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ExportError, match=r"cannot read .* as an ONNX model"):
        export_triton(broken, repo, "defects", 3, "pvc://models/triton", TritonOptions())
    assert not (repo / "defects" / "3").exists()
