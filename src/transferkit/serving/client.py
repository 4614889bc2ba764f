"""A small client for ``transferkit serve``: what ``transferkit predict --url`` and downstream Python apps use.

Server errors come back as ``ServerError`` carrying the server's own message; a 503 (queue full)
is retried after the server's Retry-After.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from transferkit.errors import TransferkitError


class ServerError(TransferkitError):
    """The server refused a request; the message is the server's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"server answered {status}: {message}")
        self.status = status


class ServingClient:
    def __init__(self, url: str, timeout: float = 60.0, retries: int = 3) -> None:
        self.retries = retries
        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as error:
                raise TransferkitError(f"cannot reach the server at {self._http.base_url}: {error}") from None
            if response.status_code == 503 and attempt < self.retries:
                time.sleep(float(response.headers.get("retry-after", "1")))
                continue
            if response.is_error:
                try:
                    message = response.json()["error"]
                except (ValueError, KeyError, TypeError):
                    message = response.text[:200]
                raise ServerError(response.status_code, message)
            return response.json()
        raise AssertionError("unreachable: the last attempt returns or raises")

    def model(self) -> dict[str, Any]:
        """Version, classes, input contract and lineage of the served model."""
        return self._request("GET", "/v1/model")

    def ready(self) -> bool:
        try:
            return self._http.get("/v2/health/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def wait_until_ready(self, timeout: float, server: subprocess.Popen[Any] | None = None) -> None:
        """Poll readiness for up to ``timeout`` seconds; stop early if the ``server`` process exits."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if server is not None and server.poll() is not None:
                raise TransferkitError(f"the server exited with code {server.returncode} before it was ready")
            if time.monotonic() > deadline:
                raise TransferkitError(f"the server at {self._http.base_url} was not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def predict(self, image: str | Path | bytes) -> dict[str, Any]:
        """Label, probabilities and (a model with a rule) decision for one image file or its bytes."""
        payload = image if isinstance(image, bytes) else Path(image).read_bytes()
        return self._request("POST", "/v1/predict", files={"file": ("image", payload)})

    def predict_batch(self, paths: list[Path]) -> list[dict[str, Any]]:
        """One entry per path, in order: label, probabilities and decision, or the server's error for that file."""
        files = [("files", (str(path), path.read_bytes())) for path in paths]
        return self._request("POST", "/v1/predict/batch", files=files)["predictions"]
