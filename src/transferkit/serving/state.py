"""What one server process holds: the current model, the batcher and hot reload.

The current model is replaced by one assignment on the event loop, so every request sees either
the old model or the new one, never a mix; requests already queued finish on the model they
were preprocessed for.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from transferkit.errors import DataError, ModelError
from transferkit.preprocessing import decode_image
from transferkit.review_drop import DataDrop
from transferkit.serving.batch_probe import CPU_CANDIDATES, GPU_CANDIDATES, probe_batch_size
from transferkit.serving.batcher import DynamicBatcher
from transferkit.serving.explanation import overlay_png
from transferkit.serving.metrics import ServerMetrics
from transferkit.serving.model_source import ServedModel, Source, inference_parallelism, load_model, source_from
from transferkit.serving.monitor import Monitor
from transferkit.serving.review import ReviewDesk
from transferkit.serving.settings import ServeSettings, admin_token

log = logging.getLogger("transferkit.serving")


@dataclass(frozen=True)
class ReloadOutcome:
    reloaded: bool
    version: str
    previous_version: str


class ServerState:
    def __init__(self, settings: ServeSettings, model: ServedModel | None = None) -> None:
        self.settings = settings
        self.name = settings.served_name()
        self.metrics = ServerMetrics()
        self.source: Source = source_from(settings)
        workers, _ = inference_parallelism(settings)
        self.batcher = DynamicBatcher(
            settings.max_batch_size, settings.max_delay_ms, settings.max_queue, workers, self.metrics
        )
        self.admin_token = admin_token()
        self.monitor = Monitor(settings, self.metrics, self.name)
        self.review = ReviewDesk(self.monitor.review_queue, None)  # the drop needs the model's classes: start()
        self._model = model
        self.batch_probe: dict[str, object] = {"probed": False, "max_batch_size": settings.max_batch_size}
        self._decoders = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
        self._reload_lock = asyncio.Lock()
        self._rejected_fingerprint: str | None = None
        self._poller: asyncio.Task[None] | None = None
        self.ready = False

    @property
    def model(self) -> ServedModel:
        assert self._model is not None, "the model is loaded at startup"
        return self._model

    async def start(self) -> None:
        if self._model is None:
            self._model = await asyncio.to_thread(load_model, self.source, self.settings)
        if self.settings.max_batch_size == 0:
            await asyncio.to_thread(self._probe_batch_size)
        self.metrics.serving(self.name, self.model.version)
        if self.settings.review_drop is not None:
            drop = await asyncio.to_thread(DataDrop, self.settings.review_drop, self.model.classifier.class_names)
            self.review = ReviewDesk(self.monitor.review_queue, drop)
            self.monitor.drop = drop
        self.monitor.serve(self.model)
        self.monitor.start()
        self.batcher.start()
        if self.settings.reload_interval_s > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="model-poller")
        self.ready = True
        log.info("serving %s %s on %s", self.name, self.model.version, self.model.classifier.providers)

    def _probe_batch_size(self) -> None:
        """Time each candidate batch size on the loaded model and batch at the winner (kept across reloads)."""
        classifier = self.model.classifier
        candidates = GPU_CANDIDATES if classifier.on_gpu else CPU_CANDIDATES
        size, rates = probe_batch_size(classifier.run, classifier.input_shape, self.batcher.workers, candidates)
        self.batcher.max_batch_size = size
        self.batch_probe = {"probed": True, "max_batch_size": size, "images_per_second": rates}
        log.info(
            "batch probe (%d concurrent calls): %s images/s; batching up to %d",
            self.batcher.workers,
            ", ".join(f"{s}: {r:.0f}" for s, r in rates.items()),
            size,
        )

    async def stop(self) -> None:
        self.ready = False
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await self.batcher.stop()
        self._decoders.shutdown(wait=True)
        await asyncio.to_thread(self.monitor.stop)

    async def preprocess(self, model: ServedModel, payload: bytes) -> np.ndarray:
        """Decode and resize off the event loop, exactly as the model's metadata says."""
        if not payload:
            raise DataError("empty image: the request carried zero bytes")
        loop = asyncio.get_running_loop()
        max_pixels = self.settings.max_image_pixels
        return await loop.run_in_executor(self._decoders, model.classifier.preprocess, payload, max_pixels)

    async def overlay(self, payload: bytes, evidence_map: np.ndarray) -> bytes:
        """The image in ``payload`` at its own size with ``evidence_map`` drawn on, as PNG bytes (decoded
        again and drawn on the decode pool: off the event loop, like preprocessing)."""
        max_pixels = self.settings.max_image_pixels

        def draw() -> bytes:
            return overlay_png(decode_image(payload, max_pixels), evidence_map)

        return await asyncio.get_running_loop().run_in_executor(self._decoders, draw)

    async def infer(self, model: ServedModel, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model for ``images``, by name (``logits`` and ``probabilities`` always)."""
        outputs = await self.batcher.infer(model, images)
        self.metrics.images.inc(len(images))
        return outputs

    async def reload(self, force: bool) -> ReloadOutcome:
        """Load the source's current model and swap it in; a rejected candidate leaves the old one serving."""
        async with self._reload_lock:
            previous = self.model
            fingerprint = await asyncio.to_thread(self.source.fingerprint)
            if not force and fingerprint in {previous.fingerprint, self._rejected_fingerprint}:
                return ReloadOutcome(False, previous.version, previous.version)
            try:
                candidate = await asyncio.to_thread(load_model, self.source, self.settings)
            except ModelError:
                self._rejected_fingerprint = fingerprint
                self.metrics.reloads.labels(outcome="rejected").inc()
                raise
            self._model = candidate
            self._rejected_fingerprint = None
            self.metrics.reloads.labels(outcome="loaded").inc()
            self.metrics.serving(self.name, candidate.version)
            self.monitor.serve(candidate)  # drift starts over against the new model's reference
            log.info("now serving %s %s (was %s)", self.name, candidate.version, previous.version)
            return ReloadOutcome(True, candidate.version, previous.version)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                await self.reload(force=False)
            except ModelError as error:
                log.error("new model rejected, still serving %s: %s", self.model.version, error)
