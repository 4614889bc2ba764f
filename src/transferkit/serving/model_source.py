"""Where the served model comes from, and loading a new one without disturbing the old.

A source is a plain file or a registry's production pointer. ``fingerprint`` is cheap (a stat or
a small JSON read), so the server can poll it; only a changed fingerprint costs a load. A
candidate is fully built and checked (ONNX checker, metadata, a warm-up inference) before it is
offered for the swap, so a broken file never replaces a working model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from transferkit.errors import ModelError
from transferkit.onnx_runtime import CPU, CudaOptions, providers_for
from transferkit.registry import Registry, RegistryError
from transferkit.serving.onnx_model import OnnxClassifier
from transferkit.serving.settings import ServeSettings


@dataclass(frozen=True)
class ServedModel:
    """A loaded, warmed-up model and what /v1/model says about it."""

    classifier: OnnxClassifier
    version: str
    fingerprint: str
    lineage: dict[str, Any] = field(default_factory=dict)
    loaded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class FileSource:
    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def fingerprint(self) -> str:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            raise ModelError(f"model file not found: {self.path}") from None
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    def resolve(self, fingerprint: str) -> tuple[Path, str | None, dict[str, Any]]:
        """(model path, version or None, lineage) of the model that ``fingerprint`` names."""
        return self.path, None, {}


class RegistrySource:
    """The production version of a registry, or its ``variant`` (another precision, e.g. int8)."""

    def __init__(self, root: Path, name: str, variant: str | None = None) -> None:
        self.registry, self.variant = Registry(root, name), variant

    def describe(self) -> str:
        variant = f", {self.variant} variant" if self.variant else ""
        return f"registry:{self.registry.name} ({self.registry.path}{variant})"

    def fingerprint(self) -> str:
        version = self.registry.production()
        if version is None:
            raise ModelError(
                f"registry {self.registry.name} at {self.registry.path} has no production version; "
                "run the training flow or `transferkit registry promote N`"
            )
        return f"v{version}"

    def resolve(self, fingerprint: str) -> tuple[Path, str | None, dict[str, Any]]:
        """The version ``fingerprint`` names, not a second read of the pointer that may have moved since."""
        version = int(fingerprint.removeprefix("v"))
        try:
            path = self.registry.model_path(version, self.variant)
        except RegistryError as error:
            raise ModelError(str(error)) from None
        return path, fingerprint, self.registry.show(version)["lineage"]


Source = FileSource | RegistrySource


def source_from(settings: ServeSettings) -> Source:
    name = settings.registry_name
    if name:
        return RegistrySource(settings.registry_root, name, settings.variant)
    if settings.variant:
        raise ModelError("--variant picks a precision of a registry version; use it with --model registry:NAME")
    return FileSource(Path(settings.model))


def inference_parallelism(settings: ServeSettings) -> tuple[int, int]:
    """(concurrent ONNX Runtime calls, intra-op threads per call) with 0 settings resolved.

    On a CPU, one single-threaded call per core beats one call spread over every core while the
    same cores also decode images and serve HTTP: a parallel operator waits for its slowest
    thread, and here some thread is always interrupted (measured in docs/benchmarks.md). A GPU
    takes one call at a time.
    """
    on_gpu = providers_for(settings.device, settings.tensorrt)[0] != CPU
    workers = settings.inference_workers or (1 if on_gpu else os.cpu_count() or 1)
    threads = settings.threads or (0 if on_gpu or workers == 1 else 1)
    return workers, threads


def load_model(source: Source, settings: ServeSettings) -> ServedModel:
    """Build, check and warm up the source's current model; raises ModelError on any problem."""
    fingerprint = source.fingerprint()
    path, version, lineage = source.resolve(fingerprint)
    _, threads = inference_parallelism(settings)
    classifier = OnnxClassifier(
        path,
        settings.device,
        threads,
        settings.tensorrt,
        io_binding={"auto": None, "on": True, "off": False}[settings.io_binding],
        cuda=CudaOptions(settings.cudnn_conv_algo_search, settings.gpu_mem_limit_mb),
        cpu_arena=settings.cpu_arena,
    )
    classifier.warm_up()
    return ServedModel(
        classifier=classifier,
        version=version or f"sha256:{classifier.sha256[:12]}",
        fingerprint=fingerprint,
        lineage=lineage,
    )
