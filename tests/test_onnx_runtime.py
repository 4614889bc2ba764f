"""ONNX Runtime session options: what the CUDA provider is given, and what a missing library says."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest

from transferkit.onnx_runtime import (
    CPU,
    CUDA,
    CudaOptions,
    create_session,
    cuda_driver_present,
    cuda_unavailable_message,
    missing_libraries,
)
from transferkit.serving.settings import load_settings


def identity_model() -> bytes:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model.SerializeToString()


@pytest.fixture
def session_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Records what each real InferenceSession is created with (the session itself is real)."""
    calls: list[dict] = []
    real = ort.InferenceSession

    def recording(model, options, providers):
        calls.append({"options": options, "providers": providers})
        return real(model, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", recording)
    return calls


def test_cuda_provider_gets_heuristic_search_and_a_bounded_arena(session_calls: list[dict]) -> None:
    create_session(identity_model(), [CUDA, CPU], threads=1)
    (cuda, cuda_options), cpu = session_calls[0]["providers"]
    assert cuda == CUDA and cpu == CPU
    assert cuda_options == {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}
    assert session_calls[0]["options"].intra_op_num_threads == 1


def test_cuda_options_follow_the_server_settings(session_calls: list[dict]) -> None:
    settings = load_settings(model="m.onnx", cudnn_conv_algo_search="EXHAUSTIVE", gpu_mem_limit_mb=512)
    options = CudaOptions(settings.cudnn_conv_algo_search, settings.gpu_mem_limit_mb)
    create_session(identity_model(), [CUDA, CPU], cuda=options, cpu_arena="off")
    (_, cuda_options), _ = session_calls[0]["providers"]
    assert cuda_options["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert cuda_options["gpu_mem_limit"] == str(512 * 2**20)
    assert session_calls[0]["options"].enable_cpu_mem_arena is False


def test_cpu_sessions_get_no_cuda_options(session_calls: list[dict]) -> None:
    session = create_session(identity_model(), [CPU])
    assert session_calls[0]["providers"] == [CPU] and session.get_providers() == [CPU]


def test_an_unknown_search_mode_is_a_clear_settings_error() -> None:
    with pytest.raises(Exception, match="cudnn_conv_algo_search"):
        load_settings(model="m.onnx", cudnn_conv_algo_search="FASTEST")


def test_missing_library_is_named() -> None:
    assert missing_libraries(("libc.so.6", "libtransferkit-no-such-library.so.1")) == [
        "libtransferkit-no-such-library.so.1"
    ]


@pytest.mark.skipif(cuda_driver_present(), reason="an NVIDIA driver is present")
def test_no_driver_message_says_so() -> None:
    message = cuda_unavailable_message([CPU])
    assert "no NVIDIA driver" in message and "libcuda" in message
