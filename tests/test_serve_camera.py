"""The camera's WebSocket (/camera): frames in, alpha mattes out, smoothed over time."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from pixelseg.config import TrainConfig  # noqa: E402
from pixelseg.engine.train import fit  # noqa: E402
from pixelseg.inference import load  # noqa: E402
from pixelseg.serve.app import ServeSettings, create_app  # noqa: E402
from pixelseg.serve.camera import decode_matte, matte  # noqa: E402
from settings import FAST  # noqa: E402

LOCAL = "http://127.0.0.1"
CAMERA = "ws://127.0.0.1/camera"  # the Host header must name this server (serve/guard.py)


@pytest.fixture(scope="module")
def run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("camera") / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(out), epochs=12, patience=0, **FAST))
    return out


@pytest.fixture(scope="module")
def client(run: Path):
    with TestClient(create_app(ServeSettings(run=str(run), device="cpu")), base_url=LOCAL) as c:
        yield c


def _frame(seed: int, size=(240, 320)) -> tuple[bytes, np.ndarray]:
    """A PNG frame like the tiny data set (a bright disc on dark noise) and its pixels."""
    h, w = size
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3.5) ** 2
    image[disc] += 150
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue(), image


def _expected(run: Path, images: list[np.ndarray], smooth: float) -> np.ndarray:
    """The matte of the last image, its logits averaged over the frames as the server
    does, computed here from the predictor directly."""
    predictor = load(run, device="cpu")
    state = None
    for logit in predictor.model_logits(images):
        state = logit if state is None else smooth * state + (1 - smooth) * logit
    return matte(state.numpy(), 1, predictor.threshold)


def test_frames_get_the_mattes_of_the_smoothed_logits(client: TestClient, run: Path) -> None:
    frames = [_frame(seed) for seed in range(3)]
    with client.websocket_connect(CAMERA) as ws:
        ws.send_text(json.dumps({"smooth": 0.7}))
        assert ws.receive_json() == {"ready": True, "size": [32, 32]}
        for data, _ in frames:
            ws.send_bytes(data)
            alpha = decode_matte(ws.receive_bytes())
    assert alpha.shape == (32, 32) and alpha.dtype == np.uint8
    # the PNG frames decode to the same pixels: the server's answer is exactly the matte
    images = [image for _, image in frames]
    assert np.array_equal(alpha, _expected(run, images, 0.7))
    assert not np.array_equal(alpha, _expected(run, images, 0.0))  # smoothing did something
    # it found the disc: opaque in the middle, transparent in the corners
    assert alpha[12:20, 12:20].mean() > 200 and alpha[:4, :4].mean() < 50


def test_a_bad_frame_is_an_error_message_and_the_connection_goes_on(client: TestClient) -> None:
    with client.websocket_connect(CAMERA) as ws:
        ws.send_text("{}")
        assert ws.receive_json()["ready"]
        ws.send_bytes(b"GIF89a not really")
        assert "unsupported image format GIF" in ws.receive_json()["error"]
        ws.send_text("a text message")
        assert "send frames as binary messages" in ws.receive_json()["error"]
        ws.send_bytes(_frame(0)[0])
        assert decode_matte(ws.receive_bytes()).shape == (32, 32)


@pytest.mark.parametrize(
    ("hello", "message"),
    [
        ("not json", "the first message must be JSON settings"),
        ('{"smooth": 1.5}', "smooth must be a number in [0, 0.95]"),
        ('{"threshold": "high"}', "threshold must be a number in [0, 1]"),
        ("[1, 2]", "the first message must be JSON settings"),
    ],
)
def test_bad_settings_are_refused_by_name(client: TestClient, hello: str, message: str) -> None:
    with client.websocket_connect(CAMERA) as ws:
        ws.send_text(hello)
        assert message in ws.receive_json()["error"]
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == 1008


def test_the_api_key_and_the_origin_are_checked(run: Path) -> None:
    app = create_app(ServeSettings(run=str(run), device="cpu", api_key="s3cret"))
    with TestClient(app, base_url=LOCAL) as c:
        with c.websocket_connect(CAMERA) as ws:
            ws.send_text('{"key": "wrong"}')
            assert "a valid API key is needed" in ws.receive_json()["error"]
        with c.websocket_connect(CAMERA) as ws:
            ws.send_text('{"key": "s3cret"}')
            assert ws.receive_json()["ready"]
        with c.websocket_connect(CAMERA, headers={"X-API-Key": "s3cret"}) as ws:
            ws.send_text("{}")  # a script may send the key as a header instead
            assert ws.receive_json()["ready"]
        # a page of another site may not open the camera's socket (no CORS rule guards it)
        evil = {"Origin": "https://evil.example"}
        with (
            pytest.raises(WebSocketDisconnect) as refused,
            c.websocket_connect(CAMERA, headers=evil),
        ):
            pass
        assert refused.value.code == 1008
        with c.websocket_connect(CAMERA, headers={"Origin": LOCAL}) as ws:
            ws.send_text('{"key": "s3cret"}')
            assert ws.receive_json()["ready"]


def test_connections_beyond_max_cameras_are_told_to_come_back(run: Path) -> None:
    app = create_app(ServeSettings(run=str(run), device="cpu", max_cameras=1))
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(CAMERA) as first:
        first.send_text("{}")
        assert first.receive_json()["ready"]
        with c.websocket_connect(CAMERA) as second:
            assert "1 cameras are connected already" in second.receive_json()["error"]
            with pytest.raises(WebSocketDisconnect) as closed:
                second.receive_text()
        assert closed.value.code == 1013
        first.send_bytes(_frame(1)[0])  # the first one goes on
        assert decode_matte(first.receive_bytes()).shape == (32, 32)
    with TestClient(app, base_url=LOCAL) as c, c.websocket_connect(CAMERA) as again:
        again.send_text("{}")  # the first one's place was given back when it closed
        assert again.receive_json()["ready"]
