"""The FastAPI application behind ``pixelseg serve``.

The model is loaded once per worker process, at start-up. ``POST /predict`` takes an image
as the multipart form field ``file`` or as the raw body (with an image content type) and
answers, by ``?output=``, a PNG (``mask``, ``overlay``, ``cutout``, ``probabilities``) or
JSON (class areas and the separate objects, COCO-style). Every problem with a request is
a 4xx JSON body ``{"error": "..."}``. An upload is read first (bounded in time and, over
all uploads arriving, in bytes); then at most ``max_queue`` requests are in progress at a
time (decoded, waiting for the model or answered), and full-size steps share a memory
budget (serve/memory.py); beyond the queue the server answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, Query, Request, Security, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from pixelseg.errors import SettingsError
from pixelseg.inference import load
from pixelseg.serve.batcher import Batcher, ModelUnavailable, Overloaded
from pixelseg.serve.camera import camera_session
from pixelseg.serve.guard import BrowserGuard, allowed_hosts, normal_origin
from pixelseg.serve.memory import MemoryBudget, decode_cost, render_cost
from pixelseg.serve.uploads import (
    ApiError,
    Limits,
    check_content_length,
    check_size,
    decode_image,
    decode_small,
    header_pixels,
)
from pixelseg.version import __version__

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
SETTINGS_ENV = "PIXELSEG_SERVE_SETTINGS"  # how worker processes get their settings


@dataclass(frozen=True)
class ServeSettings:
    run: str
    device: str = "auto"
    engine: str = "torch"
    max_bytes: int = 20 * 2**20
    max_pixels: int = 25_000_000
    max_queue: int = 64
    batch_size: int = 4
    api_key: str | None = None
    model_timeout: float = 120.0  # seconds a request waits for the model before a 503
    host: str = "127.0.0.1"  # the address listened on: it decides the default allowed_hosts
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides the local ones (guard.py)
    cors_origins: tuple[str, ...] = ()  # other sites whose pages may call the service
    # bytes that full-size decoding and rendering may hold at once (serve/memory.py)
    render_memory: int = 2 * 2**30
    upload_timeout: float = 60.0  # seconds an upload may take to arrive (then 408)
    # bytes of uploads still arriving that may be held at once (raw bodies; multipart
    # files beyond 1 MB are spooled to disk by Starlette); beyond it: 503
    upload_memory: int = 512 * 2**20
    max_cameras: int = 8  # camera-mode WebSocket connections at a time (serve/camera.py)

    def __post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise SettingsError("an empty API key would let anyone in: give a key, or none")
        if self.model_timeout <= 0 or self.upload_timeout <= 0:
            raise SettingsError("model_timeout and upload_timeout must be > 0 seconds")
        if self.upload_memory < self.max_bytes:
            raise SettingsError("upload_memory must hold at least one upload of max_bytes")
        # (lists when read back from JSON by a worker process)
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        if self.engine not in ("torch", "onnx"):
            raise SettingsError(f"engine must be torch or onnx, got {self.engine!r}")
        if min(self.max_bytes, self.max_pixels, self.max_queue, self.batch_size,
               self.render_memory, self.max_cameras) < 1:  # fmt: skip
            raise SettingsError(
                "max_bytes, max_pixels, max_queue, batch_size, render_memory and max_cameras "
                "must be >= 1"
            )


class Output(str, Enum):
    mask = "mask"
    overlay = "overlay"
    cutout = "cutout"
    probabilities = "probabilities"
    json = "json"


def create_app(
    settings: ServeSettings, on_model_death: Callable[[BaseException], None] | None = None
) -> FastAPI:
    """The application for one run; loads the model now (once per process).

    ``on_model_death`` is called if the model's thread dies (``pixelseg serve`` stops the
    server, which exits non-zero so that a supervisor restarts it); requests get 503 then.
    """
    # Pillow's bomb warning (pixelseg's own limit decides) and dropped alpha channels are
    # not worth a log line per request; set once here, not per request (not thread-safe).
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", message="upload: alpha channel dropped")
    predictor = load(settings.run, settings.engine, settings.device)
    # The model's thread takes pictures already at the model's size and answers logits at
    # that size: nothing full-size waits in its queue (serve/memory.py).
    batcher = Batcher(
        predictor.model_logits, settings.batch_size, settings.max_queue,
        stuck_after=settings.model_timeout, on_death=on_model_death,
    )  # fmt: skip
    limits = Limits(settings.max_bytes, settings.max_pixels)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()  # stop the model's thread when the server stops

    app = FastAPI(
        title="pixelseg", version=__version__, docs_url=None, redoc_url=None,
        description=f"Segmentation with the run in {Path(settings.run).name}.",
        lifespan=lifespan,
    )  # fmt: skip
    app.state.predictor, app.state.batcher, app.state.limits = predictor, batcher, limits
    app.state.settings, app.state.in_flight = settings, 0
    app.state.memory = MemoryBudget(settings.render_memory)
    app.state.receiving = 0  # bytes of uploads still arriving (the event loop's thread only)
    app.state.cameras = 0  # camera WebSockets open (the same)
    _add_error_handlers(app)
    _add_routes(app)
    if settings.cors_origins:  # answers the preflights of the sites allowed
        app.add_middleware(
            CORSMiddleware, allow_origins=[normal_origin(o) for o in settings.cors_origins],
            allow_methods=["GET", "POST"], allow_headers=["X-API-Key", "Content-Type"],
        )  # fmt: skip
    hosts = allowed_hosts(settings.host, settings.allowed_hosts)
    app.add_middleware(BrowserGuard, hosts=hosts, origins=settings.cors_origins)  # outermost
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_docs(app)
    return app


def create_app_from_env() -> FastAPI:
    """For ``uvicorn --factory`` worker processes: settings from the environment."""
    return create_app(ServeSettings(**json.loads(os.environ[SETTINGS_ENV])), stop_server)


def stop_server(exc: BaseException) -> None:
    """A dead model thread stops the server process: uvicorn shuts down on SIGTERM and
    exits by that signal (non-zero), so a supervisor (systemd, Kubernetes) restarts it."""
    log.critical("the model's thread died (%r): stopping the server", exc)
    os.kill(os.getpid(), signal.SIGTERM)


def settings_to_env(settings: ServeSettings) -> None:
    os.environ[SETTINGS_ENV] = json.dumps(asdict(settings))


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        message = "the server is busy: too many images are waiting; retry in a second"
        return JSONResponse({"error": message}, 503, headers={"Retry-After": "1"})

    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=exc.headers)

    @app.exception_handler(ModelUnavailable)
    async def unavailable(request: Request, exc: ModelUnavailable) -> JSONResponse:
        return JSONResponse({"error": f"the model cannot answer: {exc}"}, 503,
                            headers={"Retry-After": "5"})  # fmt: skip

    @app.exception_handler(MemoryError)
    async def out_of_memory(request: Request, exc: MemoryError) -> JSONResponse:
        message = "the server ran out of memory on this image; retry later or send a smaller one"
        return JSONResponse({"error": message}, 503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # not the client's fault: a bug or a failing model. The details go to the server's
        # log, never to the client (they can hold paths and internals).
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": "internal error (details are in the server's log)"}, 500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
            for e in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {problems}"}, 422)


# declared in the OpenAPI schema, so that /docs has an "Authorize" button that sends it
API_KEY = APIKeyHeader(
    name="X-API-Key", auto_error=False,
    description="the key given to pixelseg serve (--api-key-file or PIXELSEG_API_KEY), if any",
)  # fmt: skip


def _check_key(request: Request, given: str | None = Security(API_KEY)) -> None:
    key = request.app.state.settings.api_key
    sent = (given or "").encode("latin-1")  # the bytes as HTTP sent them
    if key is not None and not secrets.compare_digest(sent, key.encode()):
        raise ApiError(401, "missing or wrong API key (send it in the X-API-Key header)")


def _add_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.websocket("/camera")
    async def camera(websocket: WebSocket) -> None:
        """The page's camera mode: frames in, alpha mattes out (serve/camera.py)."""
        await camera_session(websocket)

    @app.get("/health", summary="Liveness: the service is up and its model thread runs")
    async def health(request: Request) -> JSONResponse:
        problem = request.app.state.batcher.problem()
        if problem:
            return JSONResponse({"status": "error", "error": problem}, 503)
        return JSONResponse({"status": "ok"})

    @app.get("/model", summary="The model: classes, input size, threshold, version")
    async def model(request: Request, _: None = Depends(_check_key)) -> dict:
        p = request.app.state.predictor
        return {
            "name": p.config.model, "num_classes": p.num_classes, "classes": _names(p),
            "input_size": list(p.size), "threshold": p.threshold,
            "postprocess": p.postprocess, "version": __version__,
            "trained_with": p.config.pixelseg_version,
        }  # fmt: skip

    @app.post(
        "/predict",
        summary="Segment one image",
        description="Send the image as the multipart form field `file`, or as the raw body "
        "with an image content type. `output` picks a PNG (mask, overlay, cutout, "
        "probabilities) or JSON (class areas and objects).",
        responses={200: {"content": {"image/png": {}, "application/json": {}}}},
    )
    async def predict(
        request: Request,
        output: Output = Output.mask,
        threshold: float | None = Query(None, ge=0, le=1, description="binary runs"),
        opacity: float = Query(0.45, ge=0, le=1, description="overlay tint"),
        feather: float = Query(0.0, ge=0, le=50, description="cut-out edge blur, pixels"),
        _: None = Depends(_check_key),
    ) -> Response:
        state = request.app.state
        # The upload is read before the request takes a slot: a slow client holds its
        # connection (at most --upload-timeout seconds), never a place in the model's line.
        timeout = state.settings.upload_timeout
        try:
            data = await asyncio.wait_for(_read_upload(request, state.limits), timeout)
        except asyncio.TimeoutError:  # (the builtin TimeoutError from Python 3.11 on)
            raise ApiError(
                408, f"the upload did not arrive within {timeout:g} s",
                headers={"Connection": "close"},
            ) from None  # fmt: skip
        if state.in_flight >= state.settings.max_queue:  # full: the bytes are dropped now
            raise Overloaded
        state.in_flight += 1  # (only the event loop's thread counts: no lock needed)
        try:
            predictor, (pixels, mode) = state.predictor, header_pixels(data, state.limits)
            async with state.memory.hold(decode_cost(pixels, mode)):
                size, small = await run_in_threadpool(
                    decode_small, data, state.limits, predictor.size
                )
            logit = await state.batcher.submit(small)
            # overlays and cut-outs need the picture again: decoded anew rather than kept
            # at full size while the request waited for the model
            picture = data if output in (Output.overlay, Output.cutout) else None
            cost = render_cost(pixels, predictor.num_classes)
            async with state.memory.hold(cost + (decode_cost(pixels, mode) if picture else 0)):
                return await run_in_threadpool(
                    _render, predictor, picture, state.limits, size, logit, output, threshold,
                    opacity, feather,
                )  # fmt: skip
        finally:
            state.in_flight -= 1


async def _read_upload(request: Request, limits: Limits) -> bytes:
    """The image bytes of a multipart ``file`` field or of a raw image body."""
    check_content_length(request.headers.get("content-length"), limits)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        if request.headers.get("content-length") is None:  # else the form could grow unseen
            raise ApiError(411, "a multipart upload needs a Content-Length header")
        data = await _read_form(request, limits)
    elif kind.startswith("image/") or kind == "application/octet-stream":
        data = await _read_body(request, limits)
    else:
        raise ApiError(
            415,
            f"unsupported content type {kind or '(none)'!r}: send multipart/form-data with "
            "a 'file' field, or the image bytes with an image/* content type",
        )
    check_size(data, limits)
    return data


async def _read_form(request: Request, limits: Limits) -> bytes:
    """The ``file`` field of a multipart upload. Its declared length counts against
    ``upload_memory`` while it arrives (Starlette spools files over 1 MB to disk)."""
    state = request.app.state
    length = int(request.headers["content-length"])  # checked by check_content_length
    if state.receiving + length > state.settings.upload_memory:
        raise _too_many_uploads()
    state.receiving += length
    try:
        try:
            form = await request.form(max_files=1, max_fields=10)
        except ClientDisconnect:
            raise ApiError(400, "the client went away during the upload") from None
        except Exception as exc:  # a malformed multipart body
            raise ApiError(400, f"cannot read the multipart form: {exc}") from None
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise ApiError(422, "missing form field 'file' (the image to segment)")
            return await upload.read(limits.max_bytes + 1)
        finally:
            await form.close()
    finally:
        state.receiving -= length


def _too_many_uploads() -> ApiError:
    return ApiError(
        503, "the server is receiving too many uploads; retry in a second",
        headers={"Retry-After": "1", "Connection": "close"},
    )  # fmt: skip


async def _read_body(request: Request, limits: Limits) -> bytes:
    """A raw image body. The bytes of all uploads still arriving count against the
    service's ``upload_memory``: past it the upload is refused (503), so many clients
    sending at once cannot fill the memory, while slow ones, holding few bytes, cost little."""
    state = request.app.state
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            if state.receiving + len(chunk) > state.settings.upload_memory:
                raise _too_many_uploads()
            size += len(chunk)
            state.receiving += len(chunk)
            chunks.append(chunk)
            if size > limits.max_bytes:
                raise ApiError(413, f"upload is over the {limits.max_bytes / 2**20:g} MB limit")
    except ClientDisconnect:
        raise ApiError(400, "the client went away during the upload") from None
    finally:
        state.receiving -= size
    return b"".join(chunks)


def _render(
    predictor, picture: bytes | None, limits: Limits, size: tuple[int, int], small_logit,
    output: Output, threshold: float | None, opacity: float, feather: float,
) -> Response:  # fmt: skip
    from pixelseg.inference.cutout import cutout
    from pixelseg.report import overlay, png_bytes

    logit = predictor.upsample(small_logit, size)
    mask = predictor.to_mask(logit, threshold)
    if output is Output.json:
        return JSONResponse(_summary(predictor, size, logit, mask, threshold))
    image = decode_image(picture, limits) if picture is not None else None
    if output is Output.mask:
        array = mask * 255 if predictor.num_classes == 1 else mask
    elif output is Output.overlay:
        array = overlay(image, mask, alpha=opacity)
    elif output is Output.cutout:
        array = cutout(image, mask, feather)
    else:
        array = (predictor.top_proba(logit) * 255).round()
    return Response(png_bytes(np.asarray(array, dtype=np.uint8)), media_type="image/png")


def _names(predictor) -> list[str]:
    """Every class's name, background included (binary runs: background, foreground)."""
    names = predictor.config.class_names
    if predictor.num_classes == 1:
        return ["background", names[-1]] if names else ["background", "foreground"]
    return names or [str(i) for i in range(predictor.num_classes)]


def _summary(predictor, size: tuple[int, int], logit, mask: np.ndarray, threshold) -> dict:
    from pixelseg.inference.instances import class_name, to_coco

    names = _names(predictor)
    counts = np.bincount(mask.ravel(), minlength=len(names))
    found = predictor.instances_of(logit, mask)
    return {
        "width": int(size[1]), "height": int(size[0]),
        "threshold": predictor.threshold if threshold is None else threshold,
        "classes": [
            {"id": c, "name": class_name(names, c), "pixels": int(n),
             "fraction": round(float(n) / mask.size, 6)}
            for c, n in enumerate(counts.tolist())
        ],
        "instances": to_coco(found, 1, "upload", names),
    }  # fmt: skip


def _add_docs(app: FastAPI) -> None:
    """Swagger UI from the swagger-ui-bundle package: ``/docs`` works offline."""
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="pixelseg API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )  # fmt: skip
