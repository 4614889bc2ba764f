"""The review page: a person works through the review queue, one key press per image.

``GET /review`` is a static page (``static/``: HTML, a little vanilla JS and CSS, no CDN); it
talks to ``/v1/review/...``, which needs the admin token. It lives in ``transferkit serve``
rather than a command of its own because the queue is the server's own folder: the monitor
thread adds to it while the page takes from it, and one process owning both keeps them apart
with one lock instead of two processes racing over files.

A label is written to the data drop first (review_drop.py: atomic, idempotent) and only then
does the entry leave the queue (into ``review/labelled/``, kept for undo), so a crash or restart
in between leaves the entry queued and labelling it again is a no-op: nothing lost, nothing
twice. An undo puts the entry back in the queue first, then takes the label back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from transferkit.review_drop import INVALID, REVIEW_PAGE, UNLABELLED, DataDrop, Label, utc_now
from transferkit.serving.monitor_files import ReviewQueue

STEM_PATTERN = r"^\d{8}T\d{6}_\d{6}Z-[0-9a-f]{16}$"  # ReviewQueue's entry names: nothing else reaches a path
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "bmp": "image/bmp", "webp": "image/webp"}
DISABLED = (
    "the review page is off: start the server with --monitor-dir (where the review queue is) and --review-drop "
    "(where labels land), e.g. --monitor-dir monitor --review-drop data/raw/elpv-reviewed"
)
STATIC = resources.files("transferkit.serving") / "static"


class LabelRequest(BaseModel):
    id: str = Field(pattern=STEM_PATTERN, description="the item's id, as /v1/review/next gave it")
    label: str = Field(description=f"a class name, or {INVALID!r}")
    who: str = Field(min_length=1, max_length=100, description="the reviewer's name, kept in the manifest")


class UndoRequest(BaseModel):
    id: str = Field(pattern=STEM_PATTERN)
    who: str = Field(min_length=1, max_length=100)


@dataclass(frozen=True)
class ReviewDesk:
    """The queue the page takes from and the drop it writes to; None for either turns the page off."""

    queue: ReviewQueue | None
    drop: DataDrop | None

    @property
    def enabled(self) -> bool:
        return self.queue is not None and self.drop is not None

    def parts(self) -> tuple[ReviewQueue, DataDrop]:
        if self.queue is None or self.drop is None:
            raise HTTPException(404, DISABLED)
        return self.queue, self.drop

    def remaining(self) -> int:
        queue, _ = self.parts()
        with _queue_folder(queue):
            return queue.remaining()

    def next_after(self, after: str | None) -> tuple[tuple[str, bytes, dict[str, Any]] | None, int]:
        """The next entry after ``after`` (or None) and how many wait."""
        queue, _ = self.parts()
        with _queue_folder(queue):
            return queue.next_after(after), queue.count

    def get(self, stem: str) -> tuple[bytes, dict[str, Any]] | None:
        queue, _ = self.parts()
        with _queue_folder(queue):
            return queue.get(stem)

    def label(self, request: LabelRequest) -> dict[str, Any]:
        """Write the label, then take the entry out of the queue; a repeat of a label already written
        answers "already labelled" and changes nothing."""
        queue, drop = self.parts()
        with _queue_folder(queue):
            found = queue.get(request.id)
        if found is None:
            return self._labelled_before(queue, drop, request)
        image, sidecar = found
        label = Label(
            image_sha256=sidecar["sha256"],
            label=request.label,
            who=request.who,
            when=utc_now(),
            model_version=(sidecar.get("model") or {}).get("version"),
            model_decision=sidecar.get("decision"),
            model_reason=sidecar.get("reason"),
            source=REVIEW_PAGE,
        )
        path = drop.write(image, label)
        with _queue_folder(queue):
            taken = queue.take(request.id)
            left = queue.count
        status = "labelled" if taken else "already labelled"  # taken meanwhile by a second, racing submit
        return {"status": status, "id": request.id, "label": request.label, "path": str(path), "left": left}

    def _labelled_before(self, queue: ReviewQueue, drop: DataDrop, request: LabelRequest) -> dict[str, Any]:
        sidecar = queue.labelled_sidecar(request.id)
        if sidecar is None:
            raise HTTPException(
                404,
                f"item {request.id} is no longer in the review queue (labelled long ago, or dropped by the queue's "
                "cap); go on with the next one",
            )
        now = drop.label_of(sidecar["sha256"])
        if now is not None and now.label == request.label:
            return {"status": "already labelled", "id": request.id, "label": now.label, "left": queue.count}
        said = "no label (undone)" if now is None else f"{now.label!r} by {now.who} at {now.when}"
        raise HTTPException(
            409, f"item {request.id} was already labelled: it has {said}; undo that label first to change it"
        )

    def undo(self, request: UndoRequest) -> dict[str, Any]:
        """Put a labelled entry back in the queue, then take its label back; a repeat (a stale page)
        answers "already undone" and changes nothing."""
        queue, drop = self.parts()
        sidecar = queue.labelled_sidecar(request.id)
        with _queue_folder(queue):
            if sidecar is None or not queue.put_back(request.id):
                if queue.get(request.id) is not None:
                    return {"status": "already undone", "id": request.id, "label": None, "left": queue.count}
                raise HTTPException(
                    404, f"item {request.id} cannot be undone: it is not among the last labels kept for undo"
                )
        restored = drop.undo(sidecar["sha256"], request.who)
        now = None if restored is None or restored.label == UNLABELLED else restored.label
        return {"status": "undone", "id": request.id, "label": now, "left": queue.count}


@contextlib.contextmanager
def _queue_folder(queue: ReviewQueue) -> Iterator[None]:
    """A queue folder deleted under the page is a 410 that says what happened; the server goes on,
    and the next image sent to review makes the folder again."""
    try:
        yield
    except FileNotFoundError:
        raise HTTPException(
            410,
            f"the review queue folder {queue.folder} is gone (deleted while the page was open?); nothing was "
            "labelled; the server makes it again with the next image sent to review",
        ) from None


def _desk(request: Request) -> ReviewDesk:
    return request.app.state.server.review


async def _item(request: Request, stem: str, image: bytes, sidecar: dict[str, Any]) -> dict[str, Any]:
    """What the page shows for one entry: the image and its heatmap overlay as data URLs, and the
    model's outputs as recorded when it was queued. The overlay is drawn by the model serving now."""
    state = request.app.state.server
    model = state.model
    extension = sidecar.get("image", "").rsplit(".", 1)[-1]
    overlay = None
    if model.classifier.has_heatmap:
        inputs = await state.preprocess(model, image)
        outputs = await state.batcher.infer(model, inputs[None])  # not a prediction: neither counted nor queued
        [evidence] = model.classifier.explain(outputs)
        overlay = _data_url("image/png", await state.overlay(image, evidence.values))
    return {
        "id": stem,
        "sha256": sidecar.get("sha256"),
        "image": _data_url(MEDIA_TYPES.get(extension, "application/octet-stream"), image),
        "overlay": overlay,
        "overlay_model_version": model.version if overlay else None,
        "probabilities": sidecar.get("probabilities"),
        "label": sidecar.get("label"),
        "decision": sidecar.get("decision"),
        "reason": sidecar.get("reason"),
        "ood_score": sidecar.get("ood_score"),
        "model_version": (sidecar.get("model") or {}).get("version"),
        "time": sidecar.get("time"),
        "file": sidecar.get("file"),
    }


def _data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def add_review_routes(app: FastAPI, require_admin: Callable[[Request], None]) -> None:
    """``GET /review`` (the page, its assets under /review/static) and the token-guarded JSON API."""
    app.mount("/review/static", StaticFiles(directory=str(STATIC)), name="review-static")
    admin = [Depends(require_admin)]

    @app.get("/review", response_class=HTMLResponse, tags=["review"])
    async def page(request: Request) -> HTMLResponse:
        """The review page (it asks for the admin token and a reviewer name once)."""
        if not _desk(request).enabled:
            return HTMLResponse(f"<!doctype html><title>Review is off</title><p>{DISABLED}</p>", status_code=404)
        return HTMLResponse((STATIC / "review.html").read_text())

    @app.get("/v1/review", dependencies=admin, tags=["review"])
    async def status(request: Request) -> dict[str, Any]:
        """The classes in key order (1..N) and how many images wait."""
        desk = _desk(request)
        left = await asyncio.to_thread(desk.remaining)
        classes = request.app.state.server.model.classifier.class_names
        return {"classes": classes, "invalid": INVALID, "left": left, "drop": str(desk.parts()[1].root)}

    @app.get("/v1/review/next", dependencies=admin, tags=["review"])
    async def next_item(
        request: Request, after: str | None = Query(None, pattern=STEM_PATTERN, description="an item id: the next one")
    ) -> dict[str, Any]:
        """The oldest waiting image after ``after`` (skipped ones stay queued), or ``item: null``."""
        found, left = await asyncio.to_thread(_desk(request).next_after, after)
        return {"item": None if found is None else await _item(request, *found), "left": left}

    @app.post("/v1/review/label", dependencies=admin, tags=["review"])
    async def label(request: Request, body: LabelRequest) -> dict[str, Any]:
        """Label one image: into the data drop, then out of the queue."""
        return await asyncio.to_thread(_desk(request).label, body)

    @app.post("/v1/review/undo", dependencies=admin, tags=["review"])
    async def undo(request: Request, body: UndoRequest) -> dict[str, Any]:
        """Take back a label given on the page: the image is queued again, and answered to show again."""
        desk = _desk(request)
        answer = await asyncio.to_thread(desk.undo, body)
        found = await asyncio.to_thread(desk.get, body.id)
        return {**answer, "item": None if found is None else await _item(request, body.id, *found)}
