"""The HTTP API: /v1 (images in, labels out), the Open Inference Protocol (/v2), /metrics, /admin, /review.

Every error is JSON ``{"error": message}`` (the v2 protocol's shape, used everywhere) with a 4xx
status that names the problem; a 5xx means a bug here, never bad input.
"""

from __future__ import annotations

import base64
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from transferkit import __version__
from transferkit.contract import (
    DECISION_OUTPUT,
    HEATMAP_OUTPUT,
    INPUT_CONTRACT,
    INPUT_NAME,
    OOD_KEY,
    OOD_OUTPUT,
    OUTPUT_NAMES,
    lineage,
)
from transferkit.errors import DataError, ModelError
from transferkit.serving.batcher import Overloaded
from transferkit.serving.metrics import RequestMetricsMiddleware
from transferkit.serving.model_source import ServedModel
from transferkit.serving.onnx_model import Prediction as ModelPrediction
from transferkit.serving.open_inference import (
    HEADER_LENGTH,
    V2_DATATYPES,
    InferError,
    infer_response,
    parse_infer_request,
)
from transferkit.serving.review import add_review_routes
from transferkit.serving.settings import ServeSettings, load_settings
from transferkit.serving.state import ServerState

log = logging.getLogger("transferkit.serving")

IMAGE_TYPES = ("image/", "application/octet-stream")
RAW_BODY = "body"  # the file name of an image sent as the raw body (it has none of its own)


HeatmapFormat = Literal["array", "png"]


class Heatmap(BaseModel):
    """Where the model saw the evidence behind its answer (``?heatmap=array`` or ``?heatmap=png``).

    The evidence is for the decision rule's positive classes (what a flag is about) or, for a model
    without them, for the predicted class; calibrated-logit units, positive = for those classes.
    """

    classes: list[str]
    shape: list[int]  # [h, w] of the map: the model's last feature map
    stride: float  # model-input pixels per map cell (the input is the image stretched to a square)
    values: list[list[float]] | None = None  # heatmap=array: the (h, w) evidence map
    png: str | None = None  # heatmap=png: base64 PNG of the image, at its own size, with the evidence drawn on


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]
    model_name: str
    model_version: str
    decision: str | None = None  # the model's decision output by name; None for a model without a rule
    reason: str | None = None  # why the decision is review (out of distribution, near the threshold, ...)
    ood_score: float | None = None  # the model's ood_score output; None for a model without it
    heatmap: Heatmap | None = None


class FilePrediction(BaseModel):
    filename: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    error: str | None = None
    decision: str | None = None
    reason: str | None = None
    ood_score: float | None = None
    heatmap: Heatmap | None = None


class BatchPrediction(BaseModel):
    model_name: str
    model_version: str
    predictions: list[FilePrediction]


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for bodies over the limit: at once from Content-Length, or as soon as a stream passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await _error(413, self._message())(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self._message())
            return message

        await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"request body over the {self.max_bytes:,}-byte limit; send smaller or fewer images"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _require_admin(request: Request) -> None:
    token = _state(request).admin_token
    if token is None:
        raise HTTPException(403, "admin endpoints are disabled; set TRANSFERKIT_ADMIN_TOKEN on the server")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(401, "admin endpoints need 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "wrong admin token")


async def _image_payloads(request: Request, max_images: int) -> list[tuple[str, bytes]]:
    """(filename, bytes) of the images in a raw or multipart body (more than ``max_images`` files: a 400)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form(max_files=max_images, max_fields=max_images)
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        if not files:
            raise HTTPException(400, "the multipart body has no file parts; send images as file fields")
        return [(file.filename or f"file{i}", await file.read()) for i, file in enumerate(files)]
    if content_type.startswith(IMAGE_TYPES):
        return [(RAW_BODY, await request.body())]
    raise HTTPException(
        415,
        f"unsupported content type {content_type or '(none)'!r}; send image/* or application/octet-stream "
        "bytes, or multipart/form-data files (curl -F file=@cell.png)",
    )


def _require_heatmap(model: ServedModel, wanted: HeatmapFormat | None) -> None:
    """A 400 before any work when a heatmap is asked of a model that has none."""
    if wanted is None:
        return
    try:
        model.classifier.require_heatmap()
    except ModelError as error:
        raise HTTPException(400, f"cannot answer heatmap={wanted}: {error}, or leave out heatmap") from None


async def _heatmaps(
    state: ServerState, model: ServedModel, outputs: dict[str, np.ndarray], payloads: list[bytes], wanted: HeatmapFormat
) -> list[Heatmap]:
    """One ``Heatmap`` per image of ``outputs``; the PNGs are drawn off the event loop."""
    explained = model.classifier.explain(outputs)
    heatmaps = []
    for evidence, payload in zip(explained, payloads, strict=True):
        heatmap = Heatmap(classes=evidence.classes, shape=list(evidence.values.shape), stride=evidence.stride)
        if wanted == "array":
            heatmap.values = evidence.values.tolist()
        else:
            heatmap.png = base64.b64encode(await state.overlay(payload, evidence.values)).decode("ascii")
        heatmaps.append(heatmap)
    return heatmaps


HEATMAP_QUERY = Query(
    None,
    description="add the evidence map: `array` (nested list, with its shape and stride) or `png` (base64 "
    "overlay at the image's size); a model without a heatmap output answers 400",
)


def _model_info(state: ServerState, model: ServedModel) -> dict[str, Any]:
    classifier = model.classifier
    metadata = classifier.metadata
    return {
        "name": state.name,
        "version": model.version,
        "classes": classifier.class_names,
        "input": {
            **INPUT_CONTRACT,
            "shape": [-1, *classifier.input_shape],
            "image_size": classifier.image_size,
            "resize": classifier.resize,
        },
        "outputs": classifier.output_names,
        # What the optional outputs mean, for a model that has them (absent otherwise).
        **{
            key: metadata[key]
            for key in (DECISION_OUTPUT, HEATMAP_OUTPUT)
            if key in classifier.output_names and key in metadata
        },
        **({OOD_KEY: metadata[OOD_KEY]} if OOD_OUTPUT in classifier.output_names and OOD_KEY in metadata else {}),
        "lineage": {**lineage(metadata), **model.lineage},
        "sha256": classifier.sha256,
        "source": state.source.describe(),
        "providers": classifier.providers,
        "batching": state.batch_probe,
        "loaded_at": model.loaded_at,
    }


def _observe(
    state: ServerState, model: ServedModel, predictions: list[ModelPrediction], payloads: list[tuple[str, bytes]]
) -> None:
    """Hand what the response computed to the monitor (it never blocks)."""
    named = [(None if name == RAW_BODY else name, payload) for name, payload in payloads]
    state.monitor.observe(model, predictions=predictions, payloads=named)


def _v2_metadata(state: ServerState, model: ServedModel) -> dict[str, Any]:
    return {
        "name": state.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": "UINT8", "shape": [-1, *model.classifier.input_shape]}],
        "outputs": [
            {"name": output.name, "datatype": V2_DATATYPES[output.type], "shape": [-1, *output.shape[1:]]}
            for output in model.classifier.session.get_outputs()
        ],
    }


def _served_model(state: ServerState, name: str, version: str | None = None) -> ServedModel:
    model = state.model
    if name != state.name:
        raise HTTPException(404, f"unknown model {name!r}; this server serves {state.name!r}")
    if version not in (None, "", model.version):
        raise HTTPException(404, f"model {name!r} has no version {version!r}; serving {model.version!r}")
    return model


def create_app(settings: ServeSettings, model: ServedModel | None = None) -> FastAPI:
    """The API for ``settings``; ``model``, when given, is already loaded (the CLI checks it before binding)."""
    state = ServerState(settings, model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        yield
        await state.stop()

    app = FastAPI(
        title="transferkit model server",
        version=__version__,
        description="Image classification with an exported transferkit model (ONNX Runtime).",
        lifespan=lifespan,
    )
    app.state.server = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)
    _add_error_handlers(app)
    _add_v1_routes(app)
    _add_v2_routes(app)
    _add_operational_routes(app)
    add_review_routes(app, _require_admin)
    return app


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers (``--workers N``): settings come from TRANSFERKIT_SERVE_* variables."""
    return create_app(load_settings())


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        return _error(422, f"{'.'.join(map(str, first['loc']))}: {first['msg']}")

    @app.exception_handler(DataError)
    async def bad_image(_: Request, error: DataError) -> JSONResponse:
        return _error(400, str(error))

    @app.exception_handler(InferError)
    async def bad_tensor(_: Request, error: InferError) -> JSONResponse:
        return _error(400, str(error))

    @app.exception_handler(BodyTooLarge)
    async def too_large(_: Request, error: BodyTooLarge) -> JSONResponse:
        return _error(413, str(error))

    @app.exception_handler(Overloaded)
    async def overloaded(_: Request, error: Overloaded) -> JSONResponse:
        return _error(503, f"server busy: {error}; retry shortly", {"Retry-After": "1"})


def _add_v1_routes(app: FastAPI) -> None:
    upload_doc = {
        "requestBody": {
            "content": {
                "image/*": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
                },
            }
        }
    }

    @app.post("/v1/predict", response_model=Prediction, openapi_extra=upload_doc, tags=["v1"])
    async def predict(request: Request, heatmap: HeatmapFormat | None = HEATMAP_QUERY) -> Prediction:
        """Classify one image (raw image bytes, or one multipart file); ``?heatmap=`` adds where the
        model saw the evidence."""
        state = _state(request)
        model = state.model
        _require_heatmap(model, heatmap)
        [(filename, payload)] = await _image_payloads(request, max_images=1)
        image = await state.preprocess(model, payload)
        outputs = await state.infer(model, image[None])
        [result] = model.classifier.labels(outputs)
        _observe(state, model, [result], [(filename, payload)])
        response = Prediction(**vars(result), model_name=state.name, model_version=model.version)
        if heatmap is not None:
            [response.heatmap] = await _heatmaps(state, model, outputs, [payload], heatmap)
        return response

    @app.post("/v1/predict/batch", response_model=BatchPrediction, openapi_extra=upload_doc, tags=["v1"])
    async def predict_batch(request: Request, heatmap: HeatmapFormat | None = HEATMAP_QUERY) -> BatchPrediction:
        """Classify several multipart files in one call; an unreadable file gets an error entry, not a failed
        batch. ``?heatmap=`` adds each readable file's evidence map to its entry."""
        state = _state(request)
        model = state.model
        _require_heatmap(model, heatmap)
        payloads = await _image_payloads(request, max_images=state.settings.max_request_images)
        results: list[FilePrediction] = []
        images: list[np.ndarray] = []
        readable: list[tuple[str, bytes]] = []
        for filename, payload in payloads:
            try:
                images.append(await state.preprocess(model, payload))
                readable.append((filename, payload))
                results.append(FilePrediction(filename=filename))
            except DataError as error:
                results.append(FilePrediction(filename=filename, error=str(error)))
        if images:
            outputs = await state.infer(model, np.stack(images))
            answered = [entry for entry in results if entry.error is None]
            predictions = model.classifier.labels(outputs)
            for entry, prediction in zip(answered, predictions, strict=True):
                entry.label, entry.probabilities = prediction.label, prediction.probabilities
                entry.decision, entry.reason, entry.ood_score = (
                    prediction.decision,
                    prediction.reason,
                    prediction.ood_score,
                )
            _observe(state, model, predictions, readable)
            if heatmap is not None:
                drawn_maps = await _heatmaps(state, model, outputs, [payload for _, payload in readable], heatmap)
                for entry, drawn in zip(answered, drawn_maps, strict=True):
                    entry.heatmap = drawn
        return BatchPrediction(model_name=state.name, model_version=model.version, predictions=results)

    @app.get("/v1/model", tags=["v1"])
    async def model_info(request: Request) -> dict[str, Any]:
        """Version, classes, input contract and lineage of the served model."""
        state = _state(request)
        return _model_info(state, state.model)


def _add_v2_routes(app: FastAPI) -> None:
    def both(path: str) -> list[str]:
        return [path, path.replace("{name}", "{name}/versions/{version}")]

    @app.get("/v2", tags=["v2"])
    async def server_metadata() -> dict[str, Any]:
        return {"name": "transferkit", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", tags=["v2"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["v2"])
    async def ready(request: Request) -> JSONResponse:
        is_ready = _state(request).ready
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    for path in both("/v2/models/{name}"):

        @app.get(path, tags=["v2"])
        async def model_metadata(request: Request, name: str, version: str | None = None) -> dict[str, Any]:
            state = _state(request)
            return _v2_metadata(state, _served_model(state, name, version))

    for path in both("/v2/models/{name}/ready"):

        @app.get(path, tags=["v2"])
        async def model_ready(request: Request, name: str, version: str | None = None) -> JSONResponse:
            state = _state(request)
            model = _served_model(state, name, version)
            return JSONResponse({"name": name, "version": model.version, "ready": state.ready})

    for path in both("/v2/models/{name}/infer"):

        @app.post(path, tags=["v2"])
        async def infer(request: Request, name: str, version: str | None = None) -> Response:
            """Open Inference Protocol infer: one UINT8 input ``images`` [N,3,H,W], JSON or binary tensors."""
            state = _state(request)
            model = _served_model(state, name, version)
            body = await request.body()
            infer_request, images = parse_infer_request(
                body,
                request.headers.get(HEADER_LENGTH),
                model.classifier.input_shape,
                state.settings.max_request_images,
                model.classifier.output_names,
            )
            outputs = await state.infer(model, images)
            payload, header_length = infer_response(infer_request, state.name, model.version, outputs)
            # Tensors have no image file: counted and tested for drift, never queued for review.
            named = (OUTPUT_NAMES[1], DECISION_OUTPUT, OOD_OUTPUT)
            state.monitor.observe(model, outputs={key: outputs[key] for key in named if key in outputs})
            if header_length is None:
                return Response(payload, media_type="application/json")
            return Response(payload, media_type="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})


def _add_operational_routes(app: FastAPI) -> None:
    @app.get("/metrics", tags=["operations"])
    async def metrics(request: Request) -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/monitor", tags=["operations"])
    async def monitor(request: Request) -> dict[str, Any]:
        """What the server has seen: counts by class, decision and reason; drift of recent images against
        the model's validation reference; the review queue and prediction log; what monitoring dropped."""
        return _state(request).monitor.summary()

    @app.post("/admin/reload", dependencies=[Depends(_require_admin)], tags=["operations"])
    async def reload(request: Request) -> dict[str, Any]:
        """Load, check and swap in the source's current model; a broken one is rejected and the old one stays."""
        state = _state(request)
        try:
            outcome = await state.reload(force=True)
        except ModelError as error:
            raise HTTPException(409, f"new model rejected, still serving {state.model.version}: {error}") from None
        return vars(outcome)
