"""Live segmentation over a WebSocket, for the page's camera mode (``/camera``).

The page sends camera frames and draws the person over a new background itself; the
server answers each frame with an alpha matte at the model's size, which the browser
scales to the frame (a few kilobytes a frame instead of a picture). Frames go through the
same model thread, queue bound and upload checks as ``POST /predict``, and each
connection smooths its logits over time the way ``pixelseg predict clip.mp4 --smooth``
does, so the matte does not flicker.

The conversation, all on one WebSocket:

1. the client sends a JSON text message of settings: ``{"smooth": 0.6, "threshold": 0.5,
   "key": "..."}`` (each optional; ``key`` when the server has an API key, since a
   browser cannot set headers on a WebSocket);
2. the server answers ``{"ready": true, "size": [h, w]}``, or ``{"error": ...}`` and closes;
3. then, frame by frame: the client sends an encoded image (JPEG, PNG, WebP...) as a
   binary message, and the server answers a binary message: height and width as two
   little-endian uint16, then height x width uint8 alpha (255: foreground), or a text
   message ``{"error": ...}`` for a frame it could not use (the connection stays open).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import struct

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from pixelseg.inference.onnx import logits_to_proba
from pixelseg.inference.video import TemporalSmoothing
from pixelseg.serve.batcher import ModelUnavailable, Overloaded
from pixelseg.serve.memory import decode_cost
from pixelseg.serve.uploads import ApiError, check_size, decode_small, header_pixels

DEFAULT_SMOOTH = 0.5  # weight of the frames before (see inference/video.py)
MAX_SMOOTH = 0.95
# Probabilities this far either side of the threshold ramp from transparent to opaque: a
# soft edge, which the browser's scaling of the matte to the frame keeps smooth.
SOFTNESS = 0.2
HELLO_TIMEOUT = 10.0  # seconds for the settings message
POLICY_VIOLATION = 1008  # WebSocket close codes: refused,
TRY_AGAIN_LATER = 1013  # and too many connections


def matte(logit: np.ndarray, num_classes: int, threshold: float) -> np.ndarray:
    """HxW uint8 alpha from (C, H, W) logits: the probability of anything but the
    background (class 0 of a multi-class run), ramped around ``threshold``."""
    probabilities = logits_to_proba(np.asarray(logit, dtype=np.float32))
    proba = probabilities[0] if num_classes == 1 else 1 - probabilities[0]
    alpha = np.clip(0.5 + (proba - threshold) / SOFTNESS, 0, 1)
    return (alpha * 255).round().astype(np.uint8)


def encode_matte(alpha: np.ndarray) -> bytes:
    height, width = alpha.shape
    return struct.pack("<HH", height, width) + np.ascontiguousarray(alpha).tobytes()


def decode_matte(message: bytes) -> np.ndarray:
    """The inverse of :func:`encode_matte` (for Python clients and the tests)."""
    height, width = struct.unpack_from("<HH", message)
    return np.frombuffer(message, np.uint8, offset=4).reshape(height, width)


class _Refused(Exception):
    pass


async def camera_session(websocket: WebSocket) -> None:
    """Serve one page's camera until it disconnects.

    At most ``max_cameras`` connections at a time, counted from the handshake: with the
    server's per-connection bound on queued messages (``pixelseg serve`` gives uvicorn
    ``ws_max_size`` = ``max_bytes`` and ``ws_max_queue`` = 2), that bounds the bytes frames
    can hold before they are read."""
    await websocket.accept()
    state = websocket.app.state
    if state.cameras >= state.settings.max_cameras:
        busy = f"{state.settings.max_cameras} cameras are connected already; try again later"
        await websocket.send_text(json.dumps({"error": busy}))
        await websocket.close(TRY_AGAIN_LATER)
        return
    state.cameras += 1  # (only the event loop's thread counts: no lock needed)
    try:
        await _serve(websocket, state)
    except WebSocketDisconnect:
        return
    finally:
        state.cameras -= 1


async def _serve(websocket: WebSocket, state) -> None:
    try:
        smoothing, threshold = await _hello(websocket, state)
    except _Refused as refused:
        await websocket.send_text(json.dumps({"error": str(refused)}))
        await websocket.close(POLICY_VIOLATION)
        return
    await websocket.send_text(json.dumps({"ready": True, "size": list(state.predictor.size)}))
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        try:
            if data is None:
                raise ApiError(400, "send frames as binary messages (encoded images)")
            alpha = await _segment(state, data, smoothing, threshold)
        except (ApiError, Overloaded, ModelUnavailable) as problem:
            await websocket.send_text(json.dumps({"error": _message(problem)}))
            continue
        await websocket.send_bytes(encode_matte(alpha))


async def _hello(websocket: WebSocket, state) -> tuple[TemporalSmoothing, float]:
    try:
        text = await asyncio.wait_for(websocket.receive_text(), HELLO_TIMEOUT)
        hello = json.loads(text)
        if not isinstance(hello, dict):
            raise ValueError
    except asyncio.TimeoutError:
        raise _Refused(f"no settings message within {HELLO_TIMEOUT:g} s") from None
    except (ValueError, KeyError, RecursionError):  # not JSON, or a binary message first
        raise _Refused('the first message must be JSON settings, e.g. {"smooth": 0.5}') from None
    key = state.settings.api_key
    given = hello.get("key") or websocket.headers.get("x-api-key") or ""
    if key is not None and not secrets.compare_digest(str(given).encode(), key.encode()):
        raise _Refused("a valid API key is needed: send it as the settings' key")
    smooth = hello.get("smooth", DEFAULT_SMOOTH)
    threshold = hello.get("threshold")
    if not isinstance(smooth, (int, float)) or not 0 <= smooth <= MAX_SMOOTH:
        raise _Refused(f"smooth must be a number in [0, {MAX_SMOOTH}], got {smooth!r}")
    if threshold is None:
        threshold = state.predictor.threshold
    elif not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise _Refused(f"threshold must be a number in [0, 1], got {threshold!r}")
    return TemporalSmoothing(float(smooth)), float(threshold)


async def _segment(
    state, data: bytes, smoothing: TemporalSmoothing, threshold: float
) -> np.ndarray:
    """One frame: checked and decoded like an upload, through the model's queue."""
    if state.in_flight >= state.settings.max_queue:
        raise Overloaded
    state.in_flight += 1  # (only the event loop's thread counts: no lock needed)
    try:
        predictor, limits = state.predictor, state.limits
        check_size(data, limits)
        pixels, mode = header_pixels(data, limits)
        async with state.memory.hold(decode_cost(pixels, mode)):
            _, small = await run_in_threadpool(decode_small, data, limits, predictor.size)
        logit = smoothing(await state.batcher.submit(small))
        return await run_in_threadpool(matte, logit, predictor.num_classes, threshold)
    finally:
        state.in_flight -= 1


def _message(problem: Exception) -> str:
    if isinstance(problem, ApiError):
        return problem.message
    if isinstance(problem, Overloaded):
        return "the server is busy: this frame was dropped"
    return str(problem) or "the model is unavailable"
