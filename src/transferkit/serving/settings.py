"""Server settings: CLI flags or ``TRANSFERKIT_SERVE_*`` environment variables.

Every uvicorn worker process builds its app from the environment (``app_from_env``), so the CLI
writes its flags there before starting workers. The admin token is deliberately not a setting:
it is read from ``TRANSFERKIT_ADMIN_TOKEN`` only, so it never appears in /v1/model, logs or argv.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from transferkit.errors import ConfigError
from transferkit.onnx_runtime import ConvAlgoSearch, CpuArena

ENV_PREFIX = "TRANSFERKIT_SERVE_"
ADMIN_TOKEN_ENV = "TRANSFERKIT_ADMIN_TOKEN"
REGISTRY_SCHEME = "registry:"


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", protected_namespaces=())

    model: str = Field(description="path to an exported .onnx file, or registry:NAME for its production version")
    registry_root: Path = Field(Path("models/registry"), description="registry folder for registry:NAME")
    variant: str | None = Field(None, description="registry:NAME only: serve this precision variant (e.g. int8)")
    model_name: str | None = Field(None, description="name in /v2/models/{name} (default: registry name or file stem)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorrt: bool = Field(False, description="put TensorRT before CUDA (GPU only)")
    io_binding: Literal["auto", "on", "off"] = Field("auto", description="bind outputs on the device (auto: GPU only)")
    cudnn_conv_algo_search: ConvAlgoSearch = Field("HEURISTIC", description="CUDA: cuDNN algorithm search")
    gpu_mem_limit_mb: int = Field(0, ge=0, description="CUDA: arena limit in MiB (0: the device's memory)")
    cpu_arena: CpuArena = Field("private", description="ONNX Runtime CPU arena: private per session | shared | off")
    threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads per call (0: auto)")
    inference_workers: int = Field(0, ge=0, description="concurrent ONNX Runtime calls (0: auto)")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes, one ONNX Runtime session each")
    # 0 measures it at start-up (serving/batch_probe.py): on the 2-core CPU one image per call won,
    # a GPU wants big batches. Batches take what is already waiting (max_delay_ms 0).
    max_batch_size: int = Field(
        0, ge=0, description="images per ONNX Runtime call (0: probe at start-up; 1 disables batching)"
    )
    max_delay_ms: float = Field(0.0, ge=0, description="how long a batch may wait to fill (0: take what is queued)")
    max_queue: int = Field(256, ge=1, description="images waiting for inference before 503 + Retry-After")
    max_body_bytes: int = Field(20 * 2**20, ge=1024, description="request body limit (413 above it)")
    max_image_pixels: int = Field(50_000_000, ge=1, description="decompression-bomb limit, checked on the header")
    max_request_images: int = Field(64, ge=1, description="images per /v1/predict/batch or v2 infer request")
    decode_threads: int = Field(4, ge=1, description="threads decoding and resizing images off the event loop")
    reload_interval_s: float = Field(5.0, ge=0, description="poll for a new production model (0: never)")
    graceful_timeout_s: float = Field(30.0, ge=0, description="on shutdown, wait this long for in-flight requests")
    # Monitoring (serving/monitor.py): counts and drift unless monitor is false; files only with monitor_dir.
    monitor: bool = Field(True, description="count answers and test drift (false: no monitoring at all)")
    monitor_dir: Path | None = Field(
        None, description="folder for predictions.jsonl and review/ (default: counts and drift only, no files)"
    )
    prediction_log_max_bytes: int = Field(64 * 2**20, ge=4096, description="prediction log cap, rotated files included")
    review_queue_max_images: int = Field(1000, ge=1, description="review queue cap in images (oldest dropped)")
    review_queue_max_bytes: int = Field(
        512 * 2**20, ge=4096, description="review queue cap in bytes, sidecars included (oldest dropped)"
    )
    monitor_min_free_bytes: int = Field(
        256 * 2**20, ge=0, description="never write monitoring files when the disk has less free than this"
    )
    review_drop: Path | None = Field(
        None,
        description="folder the review page's labels land in, e.g. data/raw/<name>-reviewed (with monitor_dir: "
        "GET /review is on)",
    )
    drift_window: int = Field(200, ge=2, description="recent images the drift test compares with the reference")
    drift_min_samples: int = Field(100, ge=2, description="images in the window before drift can be detected")
    drift_alpha: float = Field(0.01, gt=0, lt=1, description="drift is detected when the test's p-value is below")
    monitor_queue: int = Field(
        1024, ge=1, description="images waiting for the monitor thread; more are dropped and counted"
    )

    @model_validator(mode="after")
    def _monitoring_is_consistent(self) -> ServeSettings:
        if self.drift_min_samples > self.drift_window:
            raise ValueError(
                f"drift_min_samples ({self.drift_min_samples}) cannot exceed drift_window ({self.drift_window})"
            )
        if self.monitor_dir is not None and not self.monitor:
            raise ValueError("monitor_dir writes what the monitor sees: drop it or turn monitor back on")
        if self.monitor_dir is not None and self.workers > 1:
            # Each worker process keeps its own caps: several writing one folder would overrun them.
            raise ValueError(
                f"monitor_dir needs workers=1 (got {self.workers}): every worker would write the same files; "
                "run one worker per process or container, each with its own monitor_dir"
            )
        return self

    @property
    def registry_name(self) -> str | None:
        return self.model.removeprefix(REGISTRY_SCHEME) if self.model.startswith(REGISTRY_SCHEME) else None

    def served_name(self) -> str:
        return self.model_name or self.registry_name or Path(self.model).stem

    def to_env(self) -> dict[str, str]:
        """The settings as the environment variables that rebuild them in a worker process."""
        values = self.model_dump(mode="json", exclude_none=True)
        return {ENV_PREFIX + key.upper(): str(value) for key, value in values.items()}


def load_settings(**flags: object) -> ServeSettings:
    """Settings from ``flags`` (None means "not given") over the environment, as one clear error."""
    try:
        return ServeSettings(**{key: value for key, value in flags.items() if value is not None})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors(include_url=False)
        )
        raise ConfigError(f"invalid server settings: {problems} (flags or {ENV_PREFIX}* variables)") from None


def admin_token() -> SecretStr | None:
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    return SecretStr(token) if token else None
