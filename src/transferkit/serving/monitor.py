"""What the server sees, kept off the request path: counts, drift, a prediction log, a review queue.

A request only hands a record (what it already computed) to a bounded queue with ``put_nowait``;
one background thread does everything else: Prometheus series, the drift window and its test,
the files. When the queue is full the record is dropped and counted, so a slow disk or a burst
can cost monitoring records but never a request's time. A failed write (full disk, unwritable
folder) is counted by what failed and logged once until that kind of write succeeds again.

A plain thread and ``queue.Queue`` rather than the event loop: the writes block (files, fsync)
and the KS test is CPU work, and neither may stall the loop that answers requests.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from transferkit.decision import REVIEW
from transferkit.errors import DataError
from transferkit.review_drop import DataDrop
from transferkit.serving.drift import DriftWindow
from transferkit.serving.metrics import ServerMetrics
from transferkit.serving.model_source import ServedModel
from transferkit.serving.monitor_files import PredictionLog, ReviewQueue
from transferkit.serving.onnx_model import Prediction
from transferkit.serving.settings import ServeSettings

log = logging.getLogger("transferkit.serving.monitor")

WRITES = ("prediction_log", "review_queue")
# Image bytes waiting in the queue for the review folder, at most: past it a review image's record
# is dropped (and counted) rather than letting queued uploads grow the process without bound.
MAX_PENDING_PAYLOAD_BYTES = 64 * 2**20
DRAIN = 256  # records taken off the queue at once
# The KS test costs about half a millisecond of CPU under the GIL: run per record at 1 client it
# took a tenth of the server's throughput. It runs after this many new records, or a second after
# the first untested one, and /v1/monitor runs it on the spot when records are untested.
DRIFT_TEST_EVERY = 32
DRIFT_TEST_LATENCY_S = 1.0


@dataclass(frozen=True)
class Record:
    """One classified image, as the response already computed it.

    ``prediction`` is None for a v2 infer (its response carries tensors, not names): the monitor
    thread names the image's ``outputs`` then. ``payload`` holds the original bytes only for an
    image bound for the review queue (None elsewhere, and always for tensors: they have no file).
    """

    model: ServedModel
    time: datetime
    prediction: Prediction | None = None
    outputs: dict[str, np.ndarray] | None = None
    payload: bytes | None = None
    filename: str | None = None

    @property
    def payload_bytes(self) -> int:
        return 0 if self.payload is None else len(self.payload)


class Monitor:
    """The monitor of one server process; ``serve`` names the current model (a reload resets drift)."""

    def __init__(self, settings: ServeSettings, metrics: ServerMetrics, name: str) -> None:
        self.settings = settings
        self.metrics = metrics
        self.name = name
        self._queue: queue.Queue[Record] = queue.Queue(maxsize=settings.monitor_queue)
        # Requests take only ``_intake`` (held for an addition); the thread's bookkeeping takes ``_lock``.
        self._intake = threading.Lock()
        self._pending_payload = 0
        self.dropped = 0
        self._lock = threading.Lock()  # guards everything below that both threads read
        self.errors = dict.fromkeys(WRITES, 0)
        self._failing: set[str] = set()  # kinds whose failure is logged already
        self.total = 0
        self.by_class: Counter[str] = Counter()
        self.by_decision: Counter[str] = Counter()
        self.by_reason: Counter[str] = Counter()
        self._version: str | None = None
        self._drift: DriftWindow | None = None
        folder = settings.monitor_dir
        self.prediction_log = (
            None
            if folder is None
            else PredictionLog(
                folder / "predictions.jsonl", settings.prediction_log_max_bytes, settings.monitor_min_free_bytes
            )
        )
        self.review_queue = (
            None
            if folder is None
            else ReviewQueue(
                folder / "review",
                settings.review_queue_max_images,
                settings.review_queue_max_bytes,
                settings.monitor_min_free_bytes,
            )
        )
        self.drop: DataDrop | None = None  # where the review page's labels land (ServerState sets it)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._untested = 0  # records added to the drift window since its last test
        self._untested_since = 0.0

    # On the event loop -------------------------------------------------------------------------

    def serve(self, model: ServedModel) -> None:
        """Watch ``model`` from now on: a new drift window against its own reference."""
        classifier = model.classifier
        window = DriftWindow(
            classifier.metadata,
            classifier.output_names,
            self.settings.drift_window,
            self.settings.drift_min_samples,
            self.settings.drift_alpha,
        )
        with self._lock:
            self._version, self._drift = model.version, window
            self._publish_drift()

    def observe(
        self,
        model: ServedModel,
        predictions: list[Prediction] | None = None,
        outputs: dict[str, np.ndarray] | None = None,
        payloads: list[tuple[str | None, bytes]] | None = None,
    ) -> None:
        """Hand one record per image to the monitor thread, without ever blocking: a full queue drops
        the record and counts it. ``predictions`` (v1) or ``outputs`` (v2 tensors) say what the model
        answered; ``payloads`` are the images' (file name, bytes), kept only for review images."""
        if not self.settings.monitor:
            return
        now = datetime.now(UTC)
        if predictions is not None:
            keep = self.review_queue is not None
            named = payloads or [(None, b"")] * len(predictions)
            records = [
                Record(
                    model,
                    now,
                    prediction,
                    None,
                    payload if keep and payload and prediction.decision == REVIEW else None,
                    name,
                )
                for prediction, (name, payload) in zip(predictions, named, strict=True)
            ]
        else:
            assert outputs is not None, "observe needs predictions or outputs"
            count = len(next(iter(outputs.values())))
            records = [Record(model, now, None, {k: v[i : i + 1] for k, v in outputs.items()}) for i in range(count)]
        for record in records:
            self._put(record)

    def _put(self, record: Record) -> None:
        size = record.payload_bytes
        with self._intake:
            if size and self._pending_payload + size > MAX_PENDING_PAYLOAD_BYTES:
                self._drop(1)
                return
            self._pending_payload += size
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            with self._intake:
                self._pending_payload -= size
                self._drop(1)

    def _drop(self, count: int) -> None:
        self.dropped += count
        self.metrics.monitor_dropped.inc(count)

    def summary(self) -> dict[str, Any]:
        """The body of GET /v1/monitor, with the drift test brought up to date."""
        if self._untested:
            self._test_drift()
        with self._lock:
            drift = self._drift.status().as_json() if self._drift is not None else None
            review, log_ = self.review_queue, self.prediction_log
            body = {
                "enabled": self.settings.monitor,
                "model": {"name": self.name, "version": self._version},
                "drift": drift,
                "predictions": {
                    "total": self.total,
                    "by_class": dict(self.by_class),
                    "by_decision": dict(self.by_decision),
                    "by_reason": dict(self.by_reason),
                },
                "review_queue": {
                    "enabled": review is not None,
                    "count": 0 if review is None else review.count,
                    "bytes": 0 if review is None else review.bytes,
                    "max_count": self.settings.review_queue_max_images,
                    "max_bytes": self.settings.review_queue_max_bytes,
                    "labelled": 0,
                    "path": None if review is None else str(review.folder),
                },
                "prediction_log": {
                    "enabled": log_ is not None,
                    "path": None if log_ is None else str(log_.path),
                    "bytes": 0,
                    "max_bytes": self.settings.prediction_log_max_bytes,
                },
                "dropped": self.dropped,
                "errors": dict(self.errors),
                "pending": self._queue.unfinished_tasks,  # records queued or being written
            }
        if log_ is not None:
            with contextlib.suppress(OSError):  # an unreadable folder: counted where the writes fail
                body["prediction_log"]["bytes"] = log_.size()
        if self.drop is not None:
            # Labels in the drop not yet in a data version: what the retraining loop waits for.
            with contextlib.suppress(OSError, DataError):
                body["review_queue"]["labelled"] = self.drop.count_since(self.drop.ingested())
        return body

    # The monitor thread ------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued (up to ``timeout``), then stop."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.prediction_log is not None:
            self.prediction_log.close()

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._untested and time.monotonic() - self._untested_since >= DRIFT_TEST_LATENCY_S:
                    self._test_drift()
                if self._stopping.is_set():
                    return
                continue
            burst = [first]
            while len(burst) < DRAIN:
                try:
                    burst.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            for record in burst:
                try:
                    self._process(record)
                except Exception:  # a bug here must not end monitoring, nor reach a request
                    log.exception("monitoring record failed")
                finally:
                    with self._intake:
                        self._pending_payload -= record.payload_bytes
            if self._untested >= DRIFT_TEST_EVERY or (
                self._untested and time.monotonic() - self._untested_since >= DRIFT_TEST_LATENCY_S
            ):
                self._test_drift()
            for _ in burst:
                self._queue.task_done()

    def _process(self, record: Record) -> None:
        prediction = record.prediction
        if prediction is None:
            assert record.outputs is not None, "a record carries a prediction or outputs"
            [prediction] = record.model.classifier.labels(record.outputs)
        self._count(record, prediction)
        entry = self._entry(record, prediction)
        if self.prediction_log is not None:
            self._write("prediction_log", self.prediction_log.write, entry)
        if self.review_queue is not None and record.payload is not None:
            self._write("review_queue", self.review_queue.add, record.payload, entry)
            with self._lock:
                self.metrics.review_queue_images.set(self.review_queue.count)
                self.metrics.review_queue_bytes.set(self.review_queue.bytes)

    def _count(self, record: Record, prediction: Prediction) -> None:
        confidence = max(prediction.probabilities.values())
        metrics = self.metrics
        metrics.top_probability.observe(confidence)
        metrics.predicted.labels(label=prediction.label).inc()
        if prediction.ood_score is not None and np.isfinite(prediction.ood_score):
            metrics.ood_score.observe(prediction.ood_score)
        if prediction.decision is not None:
            metrics.decisions.labels(decision=prediction.decision, reason=prediction.reason or "").inc()
        with self._lock:
            self.total += 1
            self.by_class[prediction.label] += 1
            if prediction.decision is not None:
                self.by_decision[prediction.decision] += 1
            if prediction.reason is not None:
                self.by_reason[prediction.reason] += 1
            if self._drift is not None and record.model.version == self._version:
                self._drift.add(confidence, prediction.ood_score)
                if not self._untested:
                    self._untested_since = time.monotonic()
                self._untested += 1

    def _entry(self, record: Record, prediction: Prediction) -> dict[str, Any]:
        """One prediction-log line, also the review sidecar's content."""
        entry: dict[str, Any] = {
            "time": record.time.isoformat(timespec="microseconds"),
            "model": {"name": self.name, "version": record.model.version},
            "file": None if record.filename is None else record.filename[:255],
            "label": prediction.label,
            "probabilities": prediction.probabilities,
            "decision": prediction.decision,
            "reason": prediction.reason,
        }
        if prediction.ood_score is not None:
            entry["ood_score"] = prediction.ood_score
        return entry

    def _write(self, what: str, write: Any, *args: Any) -> None:
        """Run one write; a failure is counted and logged once per kind until that kind works again."""
        try:
            write(*args)
        except (OSError, ValueError) as error:
            with self._lock:
                self.errors[what] += 1
                first = what not in self._failing
                self._failing.add(what)
            self.metrics.monitor_errors.labels(what=what).inc()
            if first:
                log.error("monitoring: %s write failed (%s); counting further failures without logging", what, error)
            return
        if what in self._failing:
            with self._lock:
                self._failing.discard(what)
            log.warning("monitoring: %s writes work again", what)

    def _test_drift(self) -> None:
        """The KS test on the window as it is now, run outside the lock (it takes milliseconds)."""
        with self._lock:
            drift = self._drift
            sample = None if drift is None else drift.sample()
            self._untested = 0
        if drift is not None and sample is not None:
            result = drift.compare(sample)
            with self._lock:
                drift.record(*result)  # a window replaced meanwhile (a reload) is no longer shown
        with self._lock:
            self._publish_drift()

    def _publish_drift(self) -> None:
        """The drift gauges from the current window (NaN while there is no result)."""
        status = self._drift.status() if self._drift is not None else None
        nan = float("nan")
        self.metrics.drift_statistic.set(nan if status is None or status.statistic is None else status.statistic)
        self.metrics.drift_p_value.set(nan if status is None or status.p_value is None else status.p_value)
        self.metrics.drift_detected.set(1 if status is not None and status.detected else 0)
