"""Dynamic batching: concurrent requests share one ONNX Runtime call.

Hand-written rather than borrowed because what it must do is small and specific to this server:
a queue bounded in *images* (so memory cannot grow without limit), a batch closed at
``max_batch_size`` images or ``max_delay_ms`` after its first request, and each request keeping
the model it was preprocessed for, so a hot reload never mixes input sizes in one call.
Up to ``workers`` calls run at once on dedicated threads (one session serves them all); the next
batch is only gathered once a worker is free, so batches grow while the workers are busy.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from transferkit.serving.metrics import ServerMetrics
from transferkit.serving.model_source import ServedModel


class Overloaded(Exception):
    """The queue is full; the client should retry later."""


@dataclass
class _Request:
    model: ServedModel
    images: np.ndarray
    future: asyncio.Future[tuple[np.ndarray, np.ndarray]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class DynamicBatcher:
    def __init__(
        self, max_batch_size: int, max_delay_ms: float, max_queue: int, workers: int, metrics: ServerMetrics
    ) -> None:
        self.max_batch_size = max_batch_size  # 0 until the start-up probe sets it (serving/batch_probe.py)
        self.workers = workers
        self.max_delay = max_delay_ms / 1000
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._queued_images = 0
        self._carry: _Request | None = None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._free_workers = asyncio.Semaphore(workers)
        self._running: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._serve_forever(), name="batcher")

    async def stop(self) -> None:
        """Finish every queued request, then stop (graceful shutdown drains, it does not drop)."""
        while self._queued_images or self._carry is not None:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def infer(self, model: ServedModel, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model for ``images``, by name, possibly computed together with other requests."""
        if self._queued_images + len(images) > self.max_queue:
            raise Overloaded(f"{self._queued_images} images are already waiting (limit {self.max_queue})")
        request = _Request(model, images)
        self._queued_images += len(images)
        self.metrics.queue_depth.set(self._queued_images)
        self._queue.put_nowait(request)
        return await request.future

    async def _next(self, timeout: float | None) -> _Request | None:
        if self._carry is not None:
            request, self._carry = self._carry, None
            return request
        if timeout is None:
            return await self._queue.get()
        try:
            return self._queue.get_nowait()  # what is already waiting joins at once, even with no delay left
        except asyncio.QueueEmpty:
            if timeout <= 0:
                return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _collect(self) -> list[_Request]:
        """Requests for one call: same model, at most max_batch_size images (one bigger request runs alone)."""
        first = await self._next(None)
        assert first is not None  # waiting without a timeout always yields a request
        batch, count = [first], len(first.images)
        deadline = time.perf_counter() + self.max_delay
        while count < self.max_batch_size:
            request = await self._next(deadline - time.perf_counter())
            if request is None:
                break
            if request.model is not first.model or count + len(request.images) > self.max_batch_size:
                self._carry = request
                break
            batch.append(request)
            count += len(request.images)
        return batch

    async def _serve_forever(self) -> None:
        while True:
            await self._free_workers.acquire()
            batch = await self._collect()
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, batch: list[_Request]) -> None:
        images = np.concatenate([r.images for r in batch]) if len(batch) > 1 else batch[0].images
        self.metrics.batch_size.observe(len(images))
        run = batch[0].model.classifier.run_all
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._executor, run, images)
        except Exception as error:  # an ORT failure answers these requests; the server keeps serving
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(error)
        else:
            start = 0
            for request in batch:
                end = start + len(request.images)
                if not request.future.done():  # a client that went away has a cancelled future
                    request.future.set_result({name: value[start:end] for name, value in outputs.items()})
                start = end
        finally:
            self._queued_images -= len(images)
            self.metrics.queue_depth.set(self._queued_images)
            self._free_workers.release()
