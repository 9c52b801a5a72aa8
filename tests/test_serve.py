"""pixelseg serve: every endpoint, every kind of bad input (a clear 4xx, never a 5xx),
overload (503 with Retry-After), the API key, and a fuzz test."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pixelseg.config import TrainConfig
from pixelseg.engine.train import fit
from pixelseg.errors import PixelsegError
from settings import FAST

pytest.importorskip("fastapi", reason="the serve extra is not installed")
from fastapi.testclient import TestClient  # noqa: E402

from pixelseg.serve.app import ServeSettings, create_app  # noqa: E402
from pixelseg.serve.batcher import Batcher, Overloaded  # noqa: E402

LOCAL = "http://127.0.0.1:8000"  # what a browser on this machine sends as Host


@pytest.fixture(scope="module")
def run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "run"
    fit(TrainConfig(data=str(tiny_data), out=str(out), epochs=3, **FAST))
    return out


@pytest.fixture(scope="module")
def client(run: Path):
    with TestClient(create_app(ServeSettings(run=str(run), device="cpu")), base_url=LOCAL) as c:
        yield c


def _png(size=(48, 40), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8).squeeze()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _encoded(fmt: str, size=(40, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that claims ``width`` x ``height`` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))  # fmt: skip


def _image(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_health_model_page_and_docs(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    model = client.get("/model").json()
    assert model["classes"] == ["background", "foreground"] and model["input_size"] == [32, 32]
    assert 0 < model["threshold"] < 1 and model["version"]
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "cdn" not in page.text.lower() and "http" not in page.text  # all assets local
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("upload", ["multipart", "raw"])
def test_predict_every_output(client: TestClient, tiny_data: Path, upload: str) -> None:
    path = sorted((tiny_data / "images").iterdir())[0]
    data, size = path.read_bytes(), Image.open(path).size

    def post(**params):
        if upload == "multipart":
            return client.post("/predict", params=params, files={"file": (path.name, data)})
        return client.post("/predict", params=params, content=data,
                           headers={"content-type": "image/png"})  # fmt: skip

    mask = _image(post())
    assert mask.size == size and mask.mode == "L" and set(np.unique(mask)) <= {0, 255}
    assert _image(post(output="overlay", opacity=0.8)).mode == "RGB"
    cut = _image(post(output="cutout", feather=2))
    assert cut.mode == "RGBA" and cut.size == size
    assert _image(post(output="probabilities")).size == size
    summary = post(output="json").json()
    assert (summary["width"], summary["height"]) == size
    assert sum(c["pixels"] for c in summary["classes"]) == size[0] * size[1]
    foreground = summary["classes"][1]["pixels"]
    assert sum(i["area"] for i in summary["instances"]) == foreground
    everything = np.asarray(_image(post(threshold=0.0)))
    assert (everything == 255).mean() >= (np.asarray(mask) == 255).mean()


BAD = {
    "not an image": (b"hello, world" * 10, "image/png", 415, "not an image"),
    "empty body": (b"", "image/png", 400, "empty"),
    "text content type": (b"abc", "text/plain", 415, "unsupported content type"),
    "no content type": (b"abc", "", 415, "unsupported content type"),
    "1x1 GIF": (None, "image/gif", 415, "unsupported image format GIF"),
    "tiny PNG": (None, "image/png", 422, "at least 8x8"),
    "30000x30000 header": (_png_header_only(30000, 30000), "image/png", 413, "bomb"),
    "6000x5000 header": (_png_header_only(6000, 5000), "image/png", 413, "over the 25 MP"),
    "truncated PNG": (_png()[:300], "image/png", 400, "cannot decode"),
    "truncated JPEG": (None, "image/jpeg", 400, "cannot decode"),
    "JPEG header, then junk": (None, "image/jpeg", 415, "not an image"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_4xx(client: TestClient, case: str) -> None:
    body, kind, status, message = BAD[case]
    if case == "1x1 GIF":
        buffer = io.BytesIO()
        Image.new("RGB", (1, 1)).save(buffer, "GIF")
        body = buffer.getvalue()
    if case == "tiny PNG":
        body = _png((4, 4))
    if case == "truncated JPEG":
        noisy = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, "JPEG")
        body = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    if case == "JPEG header, then junk":
        body = _encoded("JPEG")[:40] + b"\x00" * 400
    response = client.post("/predict", content=body, headers={"content-type": kind})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_missing_field_bad_query_and_byte_limit(run: Path, client: TestClient) -> None:
    response = client.post("/predict", files={"image": ("a.png", _png())})
    assert response.status_code == 422 and "'file'" in response.json()["error"]
    response = client.post("/predict", params={"output": "svg"}, content=_png(),
                           headers={"content-type": "image/png"})  # fmt: skip
    assert response.status_code == 422 and "output" in response.json()["error"]
    small = ServeSettings(run=str(run), device="cpu", max_bytes=1000)
    with TestClient(create_app(small), base_url=LOCAL) as limited:
        response = limited.post("/predict", content=_png((64, 64)),
                                headers={"content-type": "image/png"})  # fmt: skip
        assert response.status_code == 413 and "MB limit" in response.json()["error"]


def test_api_key(run: Path) -> None:
    keyed = ServeSettings(run=str(run), device="cpu", api_key="s3cret")
    with TestClient(create_app(keyed), base_url=LOCAL) as c:
        assert c.get("/health").status_code == 200  # liveness stays open
        assert c.get("/model").status_code == 401
        assert c.get("/model", headers={"x-api-key": "wrong"}).status_code == 401
        ok = c.post("/predict", content=_png(), headers={"content-type": "image/png",
                                                         "x-api-key": "s3cret"})  # fmt: skip
        assert ok.status_code == 200


def test_batcher_batches_and_refuses_when_full() -> None:
    seen: list[int] = []
    gate = threading.Event()

    def slow(items):
        gate.wait(5)
        seen.append(len(items))
        return [x * 2 for x in items]

    batcher = Batcher(slow, batch_size=4, max_queue=2, max_wait=0.05)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit(1))  # taken by the worker, which waits
        await asyncio.sleep(0.2)
        queued = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await batcher.submit(4)  # the queue (2) is full
        gate.set()
        return [await first] + [await q for q in queued]

    assert asyncio.run(scenario()) == [2, 4, 6]
    assert seen == [1, 2]  # the two waiting requests ran as one batch
    batcher.close()


def test_overload_answers_503_with_retry_after(run: Path, monkeypatch) -> None:
    app = create_app(ServeSettings(run=str(run), device="cpu", max_queue=1, batch_size=1))
    predictor = app.state.predictor
    real = predictor.logits

    def slow(images):
        time.sleep(0.5)
        return real(images)

    app.state.batcher.run_batch = slow
    statuses, headers = [], []

    with TestClient(app, base_url=LOCAL) as c:

        def post():
            r = c.post("/predict", content=_png(), headers={"content-type": "image/png"})
            statuses.append(r.status_code)
            headers.append(r.headers.get("retry-after"))

        threads = [threading.Thread(target=post) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}
    assert all(h == "1" for s, h in zip(statuses, headers, strict=True) if s == 503)


SEEDS = [_png(), _encoded("JPEG"), _encoded("BMP"), _png(mode="L")]


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.sampled_from(SEEDS),
    cut=st.integers(0, 4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=8),
    noise=st.binary(max_size=200),
    kind=st.sampled_from(["image/png", "image/jpeg", "application/octet-stream", "multipart"]),
)
def test_fuzz_never_a_server_error(client: TestClient, seed, cut, flips, noise, kind) -> None:
    data = bytearray(seed[: max(cut, 1)] if cut < len(seed) else seed)
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    data = bytes(data) + noise
    if kind == "multipart":
        response = client.post("/predict", files={"file": ("x", data)})
    else:
        response = client.post("/predict", content=data, headers={"content-type": kind})
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.json()["error"]


def _start_server(run: Path, *options: str):
    """``pixelseg serve RUN`` in a process of its own, once healthy: (process, port)."""
    import http.client
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "pixelseg", "serve", str(run), "--port", str(port),
         "--device", "cpu", *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    for _ in range(600):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return server, port
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError(f"the server did not start: {server.communicate()[0][-2000:]}")


def test_pixelseg_serve_command_end_to_end(run: Path, real_data: Path) -> None:
    """``pixelseg serve`` as a user starts it: a PH2 image in, a mask of its size out; then
    SIGTERM stops it promptly."""
    import http.client

    from pixelseg.data.layouts import find_samples

    server, port = _start_server(run)
    try:
        image = find_samples(real_data / "ph2")[1][0].image
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/predict", body=image.read_bytes(),
                     headers={"content-type": "image/bmp"})  # fmt: skip
        response = conn.getresponse()
        assert response.status == 200
        mask = Image.open(io.BytesIO(response.read()))
        assert mask.size == Image.open(image).size
    finally:
        server.terminate()
        output = server.communicate(timeout=20)[0]
    # uvicorn shuts down cleanly, then re-raises the signal: the usual exit for a SIGTERM
    assert server.returncode in (0, -15) and "Finished server process" in output, output[-2000:]


def test_odd_keys_unknown_routes_and_a_failing_model(run: Path) -> None:
    keyed = ServeSettings(run=str(run), device="cpu", api_key="s3cret")
    with TestClient(create_app(keyed), base_url=LOCAL) as c:
        odd = c.get("/model", headers={"x-api-key": "clé".encode("latin-1")})
        assert odd.status_code == 401  # not a 500 from comparing non-ASCII text
        missing = c.get("/no-such-page")
        assert missing.status_code == 404 and "error" in missing.json()
    app = create_app(ServeSettings(run=str(run), device="cpu"))
    real = app.state.batcher.run_batch

    def fails_on_dark(images):
        if any(image.mean() < 10 for image in images):
            raise RuntimeError("the model failed")
        return real(images)

    app.state.batcher.run_batch = fails_on_dark
    # (Starlette re-raises after answering, so servers log it; the test client must not)
    with TestClient(app, base_url=LOCAL, raise_server_exceptions=False) as c:
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(buffer, "PNG")
        png = {"content-type": "image/png"}
        failed = c.post("/predict", content=buffer.getvalue(), headers=png)
        assert failed.status_code == 500 and "internal error" in failed.json()["error"]
        assert "the model failed" not in failed.text  # internals stay in the server's log
        ok = c.post("/predict", content=_png(), headers=png)
        assert ok.status_code == 200  # the service goes on
        assert c.get("/health").json() == {"status": "ok"} and app.state.in_flight == 0


def test_foreign_host_and_origin_are_refused(run: Path) -> None:
    """DNS rebinding (a foreign Host) and other sites' pages (a foreign Origin) get 403;
    the service's own page, clients without an Origin, and listed sites are served."""
    app = create_app(ServeSettings(run=str(run), device="cpu"))
    png = {"content-type": "image/png"}
    with TestClient(app, base_url=LOCAL) as c:
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
            assert c.get("/model", headers={"host": host}).status_code == 200, host
        rebound = c.get("/model", headers={"host": "attacker.example"})
        assert rebound.status_code == 403 and "--allowed-hosts" in rebound.json()["error"]
        foreign = c.post("/predict", content=_png(),
                         headers={**png, "origin": "https://attacker.example"})  # fmt: skip
        assert foreign.status_code == 403 and "--cors-origins" in foreign.json()["error"]
        assert (
            c.post("/predict", content=_png(), headers={**png, "origin": "null"}).status_code == 403
        )
        own = c.post("/predict", content=_png(), headers={**png, "origin": LOCAL})
        assert own.status_code == 200
    opened = ServeSettings(run=str(run), device="cpu", allowed_hosts=("seg.example",),
                           cors_origins=("https://app.example",))  # fmt: skip
    with TestClient(create_app(opened), base_url="http://seg.example") as c:
        listed = c.post("/predict", content=_png(),
                        headers={**png, "origin": "https://app.example"})  # fmt: skip
        assert listed.status_code == 200
        assert listed.headers["access-control-allow-origin"] == "https://app.example"
        assert c.get("/model", headers={"host": "127.0.0.1"}).status_code == 200  # kept
        assert c.get("/model", headers={"host": "other.example"}).status_code == 403
    anywhere = ServeSettings(run=str(run), device="cpu", host="0.0.0.0")
    with TestClient(create_app(anywhere), base_url="http://192.168.1.20:8000") as c:
        assert c.get("/model").status_code == 200  # every interface, no names: any name
    named = ServeSettings(run=str(run), device="cpu", host="0.0.0.0", allowed_hosts=("box",))
    with TestClient(create_app(named), base_url="http://box:8000") as c:
        assert c.get("/model").status_code == 200
        assert c.get("/model", headers={"host": "attacker.example:8000"}).status_code == 403
    mixed = ServeSettings(run=str(run), device="cpu", cors_origins=("https://App.example/",))
    with TestClient(create_app(mixed), base_url=LOCAL) as c:
        answer = c.post("/predict", content=_png(),
                        headers={**png, "origin": "https://app.example"})  # fmt: skip
        assert answer.headers["access-control-allow-origin"] == "https://app.example"


def test_phone_photos_are_upright_and_multi_picture_jpegs_read(run: Path, client) -> None:
    """EXIF orientation 6 gives the mask `predict` gives (rotated upright); a camera's MPO
    file is read like its first picture."""
    from pixelseg.inference import load

    pixels = np.random.default_rng(0).integers(0, 255, (40, 64, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", exif=exif)
    answer = client.post(
        "/predict", content=buffer.getvalue(), headers={"content-type": "image/jpeg"}
    )
    assert answer.status_code == 200
    mask = np.asarray(Image.open(io.BytesIO(answer.content)))
    assert mask.shape == (64, 40)  # upright: the width and height swapped
    path = Path(run) / "phone.jpg"
    path.write_bytes(buffer.getvalue())
    expected = load(run, device="cpu").predict(path)
    assert np.array_equal(mask > 0, np.asarray(expected) > 0)
    mpo = io.BytesIO()
    first, second = Image.fromarray(pixels), Image.fromarray(255 - pixels)
    first.save(mpo, "MPO", save_all=True, append_images=[second])
    answer = client.post("/predict", content=mpo.getvalue(), headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200 and Image.open(io.BytesIO(answer.content)).size == (64, 40)


class _Dies(BaseException):
    """Escapes the batcher's per-batch ``except Exception``, as a real fault could."""


def test_a_dead_model_thread_fails_fast_and_is_reported(run: Path) -> None:
    deaths: list[BaseException] = []
    app = create_app(ServeSettings(run=str(run), device="cpu"), on_model_death=deaths.append)

    def dies(images):
        raise _Dies("the model thread is gone")

    app.state.batcher.run_batch = dies
    png = {"content-type": "image/png"}
    with TestClient(app, base_url=LOCAL) as c:
        first = c.post("/predict", content=_png(), headers=png)
        assert first.status_code == 503 and "thread stopped" in first.json()["error"]
        started = time.monotonic()
        later = c.post("/predict", content=_png(), headers=png)
        assert later.status_code == 503 and time.monotonic() - started < 5  # no wait
        health = c.get("/health")
        assert health.status_code == 503 and "thread stopped" in health.json()["error"]
    assert len(deaths) == 1 and isinstance(deaths[0], _Dies)


def test_a_hanging_model_times_out_and_marks_the_service_unhealthy(run: Path) -> None:
    app = create_app(ServeSettings(run=str(run), device="cpu", model_timeout=1.0))
    release = threading.Event()

    def hangs(images):
        release.wait(30)
        raise RuntimeError("released")

    app.state.batcher.run_batch = hangs
    png = {"content-type": "image/png"}
    try:
        with TestClient(app, base_url=LOCAL) as c:
            started = time.monotonic()
            stuck = c.post("/predict", content=_png(), headers=png)
            assert stuck.status_code == 503 and "no answer from the model in 1 s" in stuck.text
            assert time.monotonic() - started < 10
            time.sleep(0.2)
            health = c.get("/health")
            assert health.status_code == 503 and "running one batch for over 1 s" in health.text
            refused = c.post("/predict", content=_png(), headers=png)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            release.set()
            time.sleep(0.3)
            assert c.get("/health").status_code == 200  # it answered again: healthy
    finally:
        release.set()


def test_the_api_key_comes_from_a_file_or_the_environment(
    run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import argparse

    from pixelseg.cli import _api_key

    def args(**kw) -> argparse.Namespace:
        return argparse.Namespace(**{"api_key": None, "api_key_file": None, **kw})

    monkeypatch.delenv("PIXELSEG_API_KEY", raising=False)
    assert _api_key(args()) is None
    key_file = tmp_path / "key"
    key_file.write_text("s3cret\n# rotated in May\n")
    assert _api_key(args(api_key_file=str(key_file))) == "s3cret"  # the first line
    key_file.write_text("\n")
    with pytest.raises(PixelsegError, match="key file is empty"):
        _api_key(args(api_key_file=str(key_file)))
    monkeypatch.setenv("PIXELSEG_API_KEY", "from-env")
    assert _api_key(args()) == "from-env"
    monkeypatch.setenv("PIXELSEG_API_KEY", " ")
    with pytest.raises(PixelsegError, match="set but empty"):
        _api_key(args())
    monkeypatch.delenv("PIXELSEG_API_KEY")
    assert _api_key(args(api_key="typed")) == "typed"
    assert "visible to other users" in capsys.readouterr().err
    with pytest.raises(ValueError, match="empty API key"):
        ServeSettings(run=str(run), api_key="")
    keyed = create_app(ServeSettings(run=str(run), device="cpu", api_key="s3cret"))
    with TestClient(keyed, base_url=LOCAL) as c:
        schema = c.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
        assert c.get("/model", headers={"x-api-key": "s3cret"}).status_code == 200


def test_slow_uploads_hold_no_slot_and_are_dropped_in_time(run: Path) -> None:
    """70 clients that send their headers and then trickle their bodies: a normal request
    is still answered (they hold no place in the model's line), and after --upload-timeout
    each slow one gets 408 and its connection is closed."""
    import http.client
    import select
    import socket

    server, port = _start_server(run, "--upload-timeout", "10", "--max-queue", "8")
    slow = []
    try:
        head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n")  # fmt: skip
        for _ in range(70):
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(head.encode() + _png()[:20])
            slow.append(sock)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/predict", body=_png(), headers={"content-type": "image/png"})
        assert conn.getresponse().status == 200
        # answered while every slow client still waits (none has its 408 yet)
        assert select.select(slow, [], [], 0)[0] == []
        answers = [_answer(sock) for sock in slow]  # each waits for its 408
        assert all(a.startswith("HTTP/1.1 408") for a in answers), answers[0][:200]
        assert "did not arrive within 10 s" in answers[0]
    finally:
        for sock in slow:
            sock.close()
        server.terminate()
        server.communicate(timeout=30)


def _answer(sock) -> str:
    """What the server sent on a raw connection, up to the end of a JSON body or the close."""
    received = b""
    while not received.endswith(b"}"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received.decode("latin-1")


def test_the_memory_budget_bounds_what_full_size_steps_hold() -> None:
    from pixelseg.serve.memory import MemoryBudget, render_cost

    budget = MemoryBudget(100)
    peak, order = [0], []

    async def step(name: str, nbytes: int) -> None:
        async with budget.hold(nbytes):
            peak[0] = max(peak[0], budget.used)
            order.append(name)
            await asyncio.sleep(0.01)

    async def scenario() -> None:
        # 60 + 60 cannot run together; 500 is more than the whole budget and runs alone
        await asyncio.gather(step("a", 60), step("b", 60), step("huge", 500), step("c", 30))

    asyncio.run(scenario())
    assert peak[0] <= 100 and budget.used == 0
    assert order == ["a", "b", "huge", "c"]  # first come, first served: nobody overtakes
    # 24 MP and 11 classes: logits and their temporaries dominate
    assert render_cost(24_000_000, 11) > render_cost(24_000_000, 1) > 0
    with pytest.raises(ValueError):
        MemoryBudget(0)


@pytest.mark.parametrize("mode", ["I;16", "CMYK", "P", "LA"])
def test_uploads_of_every_mode_get_the_mask_predict_gives(
    run: Path, client, tmp_path: Path, mode: str
) -> None:
    """16-bit grey, CMYK (as JPEG), palette and grey+alpha pictures: the service reads them
    as the CLI reads files (one reader), so both give the same mask."""
    from pixelseg.inference import load

    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 56, 3), np.uint8))
    if mode == "I;16":
        picture = Image.fromarray(rng.integers(0, 65535, (40, 56)).astype(np.uint16))
    else:
        picture = rgb.convert(mode)
    fmt, kind = ("JPEG", "image/jpeg") if mode == "CMYK" else ("PNG", "image/png")
    path = tmp_path / f"picture.{fmt.lower()}"
    picture.save(path, fmt)
    answer = client.post("/predict", content=path.read_bytes(), headers={"content-type": kind})
    assert answer.status_code == 200, answer.text
    served = np.asarray(Image.open(io.BytesIO(answer.content))) > 0
    assert np.array_equal(served, load(run, device="cpu").predict(path) > 0)


def test_uploads_still_arriving_are_bounded_in_bytes(run: Path) -> None:
    """Past --upload-memory-mb of bytes held by uploads in progress, a new one gets 503;
    the count goes back to zero after every upload, answered or refused."""
    settings = ServeSettings(run=str(run), device="cpu", max_bytes=20_000, upload_memory=20_000)
    app = create_app(settings)
    png = {"content-type": "image/png"}
    with TestClient(app, base_url=LOCAL) as c:
        assert c.post("/predict", content=_png(), headers=png).status_code == 200
        assert app.state.receiving == 0
        app.state.receiving = 19_990  # as if other uploads were arriving now
        busy = c.post("/predict", content=_png(), headers=png)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "receiving too many uploads" in busy.json()["error"]
        assert app.state.receiving == 19_990  # the refused one gave back what it took
        app.state.receiving = 0
    with pytest.raises(ValueError, match="upload_memory"):
        ServeSettings(run=str(run), max_bytes=10_000, upload_memory=5000)


def test_requests_that_gave_up_are_not_run() -> None:
    """A request that gave up while queued (timed out, or its client went away) is
    dropped before the model runs it."""
    gate, seen = threading.Event(), []

    def model(items):
        gate.wait(5)
        seen.extend(items)
        return items

    batcher = Batcher(model, batch_size=1, max_queue=4, max_wait=0.0)

    async def scenario():
        first = asyncio.ensure_future(batcher.submit("first"))  # the model waits at the gate
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(batcher.submit("gave up"))  # queued behind it
        await asyncio.sleep(0.05)
        gone.cancel()  # as wait_for does on a timeout
        await asyncio.sleep(0.05)
        gate.set()
        return await first

    assert asyncio.run(scenario()) == "first"
    time.sleep(0.3)
    assert seen == ["first"]  # "gave up" was never run
    batcher.close()
