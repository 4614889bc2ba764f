"""ONNX Runtime sessions for every layer: the feature cache, export verification and serving.

Neutral ground on purpose: training and export must not import the server to get a session.

Execution providers follow a device setting, and a GPU provider that was asked for must come
up: ONNX Runtime silently falls back to the CPU otherwise. The CUDA provider options follow
what ONNX Runtime's issue tracker taught its users: cuDNN's EXHAUSTIVE algorithm search makes
every new batch shape slow on first sight (HEURISTIC is the default here), and the default
arena growth (kNextPowerOfTwo) lets variable batch sizes grow GPU memory without bound
(kSameAsRequested allocates what is asked for).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from dataclasses import dataclass
from typing import Any, Literal

import onnxruntime as ort

from transferkit.errors import ModelError

DEVICES = ("auto", "cpu", "cuda")
CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
ConvAlgoSearch = Literal["HEURISTIC", "EXHAUSTIVE", "DEFAULT"]
CpuArena = Literal["shared", "private", "off"]

# What the CUDA provider of onnxruntime-gpu 1.31 (CUDA 13, cuDNN 9) loads; the same list as
# onnxruntime.preload_dlls() for that build, named here so a failure can say which one is missing.
CUDA_LIBRARIES = (
    "libcudart.so.13",
    "libcublas.so.13",
    "libcublasLt.so.13",
    "libcurand.so.10",
    "libcufft.so.12",
    "libcudnn.so.9",
)


@functools.cache
def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library loads (the CUDA provider cannot start without it)."""
    return not missing_libraries(("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1",))


def missing_libraries(names: tuple[str, ...]) -> list[str]:
    """The shared libraries among ``names`` that the dynamic loader cannot open."""
    missing = []
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(name)
    return missing


def cuda_unavailable_message(providers: list[str]) -> str:
    """Why CUDA did not come up, naming the driver or CUDA/cuDNN libraries that do not load."""
    if not cuda_driver_present():
        return f"CUDA was requested but no NVIDIA driver (libcuda) loads here; the session runs on {providers}"
    missing = missing_libraries(CUDA_LIBRARIES)
    if missing:
        return (
            f"CUDA was requested but these CUDA/cuDNN libraries do not load: {', '.join(missing)}. Install CUDA 13 "
            "and cuDNN 9 (the torch wheels bring them) or put them on LD_LIBRARY_PATH; use --device cpu meanwhile"
        )
    return f"CUDA was requested but the session runs on {providers}; check the onnxruntime-gpu log above"


@dataclass(frozen=True)
class CudaOptions:
    """The CUDA execution provider's options that decide latency and memory on a GPU."""

    conv_algo_search: ConvAlgoSearch = "HEURISTIC"
    gpu_mem_limit_mb: int = 0  # 0: no limit beyond the device's memory

    def provider_options(self) -> dict[str, str]:
        options = {"cudnn_conv_algo_search": self.conv_algo_search, "arena_extend_strategy": "kSameAsRequested"}
        if self.gpu_mem_limit_mb:
            options["gpu_mem_limit"] = str(self.gpu_mem_limit_mb * 2**20)
        return options


def providers_for(device: str, tensorrt: bool = False) -> list[str]:
    """Execution providers for ``device``; a GPU provider that was asked for must exist."""
    if device not in DEVICES:
        raise ModelError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    # onnxruntime-gpu lists CUDA even where no driver exists; "auto" must not try it there.
    available = [p for p in ort.get_available_providers() if p == CPU or cuda_driver_present()]
    if device == "cpu":
        if tensorrt:
            raise ModelError("TensorRT needs a GPU; drop --tensorrt or use --device cuda")
        return [CPU]
    wanted = [CUDA, CPU]
    if tensorrt:
        if TENSORRT not in available:
            raise ModelError("TensorRT requested but onnxruntime has no TensorRT provider here; drop --tensorrt")
        wanted.insert(0, TENSORRT)
    if device == "cuda" and CUDA not in available:
        raise ModelError("device 'cuda' requested but onnxruntime has no CUDA provider here; use --device cpu")
    return [p for p in wanted if p in available]


@functools.cache
def _register_shared_cpu_arena() -> None:
    """One CPU arena for every session of this process, growing by what is asked for."""
    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg({"arena_extend_strategy": 1}))  # kSameAsRequested


def session_options(threads: int = 0, cpu_arena: CpuArena = "private") -> ort.SessionOptions:
    """``threads`` intra-op threads (0 = ORT's choice), quiet logging, and the CPU memory arena.

    ``private`` is ORT's default: each session keeps its own arena at its peak. ``shared`` puts
    every session of the process on one arena, so a hot-reloaded model reuses the memory of the
    one it replaces instead of adding its own peak. ``off`` allocates per call.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = cpu_arena != "off"
    if cpu_arena == "shared":
        _register_shared_cpu_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def provider_list(providers: list[str], cuda: CudaOptions | None = None) -> list[Any]:
    """``providers`` with the CUDA provider carrying its options (what InferenceSession accepts)."""
    cuda = cuda or CudaOptions()
    return [(p, cuda.provider_options()) if p == CUDA else p for p in providers]


def create_session(
    model: bytes,
    providers: list[str],
    threads: int = 0,
    cuda: CudaOptions | None = None,
    cpu_arena: CpuArena = "private",
) -> ort.InferenceSession:
    """A session on ``providers`` (check ``get_providers()``: ORT drops a GPU provider that fails)."""
    if CUDA in providers:
        ort.preload_dlls()
    return ort.InferenceSession(model, session_options(threads, cpu_arena), providers=provider_list(providers, cuda))
