"""Load test of ``pixelseg serve``: N concurrent clients on loopback for a fixed time.

Starts ``pixelseg serve RUN`` in its own process, waits for ``/health``, then runs
``--clients`` threads, each posting ``--image`` to ``/predict`` in a loop (one keep-alive
connection per client) for ``--seconds``. Prints requests per second, latency percentiles
of the answered requests, the count of each status code and of connection errors, and the
server's resident memory before, during (peak) and after. A client that gets 503 waits
as its Retry-After header says, as a well-behaved client would:

    python benchmarks/serve_load.py --run RUN --image ../shared/data/ph2/.../IMD002.bmp \\
        --clients 32 --seconds 60

``--blocky 6000x4000`` sends a picture of that size made of flat colour blocks instead (a
few hundred KB as PNG, 24 MP decoded: what bounds the server's memory), and ``--outputs
json,overlay`` gives the clients these outputs in turn:

    python benchmarks/serve_load.py --run CAMVID_RUN --blocky 6000x4000 --clients 16 \\
        --outputs json,overlay --seconds 60
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import mimetypes
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process, from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not become healthy")


def blocky_png(width: int, height: int, path: Path) -> None:
    """A picture of flat colour blocks: small as a PNG, large once decoded."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (height // 200 + 1, width // 200 + 1, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(blocks, 200, axis=0), 200, axis=1)[:height, :width]
    Image.fromarray(image).save(path, optimize=True)


def client(
    port: int, body: bytes, kind: str, until: float, results: list, lock, output: str
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    mine = []
    while time.monotonic() < until:
        start = time.perf_counter()
        try:
            conn.request("POST", f"/predict?output={output}", body=body,
                         headers={"content-type": kind})  # fmt: skip
            response = conn.getresponse()
            response.read()
            mine.append((response.status, time.perf_counter() - start))
            if response.status == 503:  # as a polite client does: wait as told, reconnect
                conn.close()
                time.sleep(float(response.getheader("retry-after") or 1))
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        except OSError as exc:
            mine.append((f"connection error: {type(exc).__name__}", time.perf_counter() - start))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.close()
    with lock:
        results.extend(mine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--image", help="the image every request sends")
    parser.add_argument("--blocky", help="send a made-up picture of flat blocks, WIDTHxHEIGHT")
    parser.add_argument("--outputs", default="mask", help="outputs the clients ask in turn")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--serve-args", default="", help="more options for pixelseg serve")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if (args.image is None) == (args.blocky is None):
        parser.error("give --image or --blocky")
    if args.blocky:
        width, height = (int(v) for v in args.blocky.lower().split("x"))
        args.image = str(Path(tempfile.mkdtemp()) / f"blocky_{width}x{height}.png")
        blocky_png(width, height, Path(args.image))
        print(f"sending {args.image}: {Path(args.image).stat().st_size / 1e3:.0f} KB")
    outputs = args.outputs.split(",")

    port = free_port()
    command = [sys.executable, "-m", "pixelseg", "serve", args.run, "--port", str(port),
               "--device", args.device, *args.serve_args.split()]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_healthy(port, server)
        before, _ = rss_mib(server.pid)
        body = Path(args.image).read_bytes()
        kind = mimetypes.guess_type(args.image)[0] or "application/octet-stream"
        results: list = []
        lock = threading.Lock()
        until = time.monotonic() + args.seconds
        start = time.perf_counter()
        threads = [
            threading.Thread(
                target=client,
                args=(port, body, kind, until, results, lock, outputs[i % len(outputs)]),
            )
            for i in range(args.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        after, peak = rss_mib(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            print("the server did not stop within 60 s of SIGTERM; killed", file=sys.stderr)
            server.kill()
    codes = collections.Counter(status for status, _ in results)
    answered = sorted(seconds for status, seconds in results if status == 200)
    q = statistics.quantiles(answered, n=100) if len(answered) > 1 else [float("nan")] * 99
    figures = {
        "clients": args.clients, "outputs": outputs, "image": Path(args.image).name,
        "seconds": round(elapsed, 1), "requests": len(results),
        "ok": len(answered), "requests_per_s": round(len(answered) / elapsed, 2),
        "p50_ms": round(q[49] * 1000), "p95_ms": round(q[94] * 1000),
        "p99_ms": round(q[98] * 1000), "status_counts": {str(k): v for k, v in codes.items()},
        "server_5xx": sum(v for k, v in codes.items() if isinstance(k, int) and k >= 500),
        "rss_before_mib": round(before), "rss_after_mib": round(after),
        "rss_peak_mib": round(peak),
    }  # fmt: skip
    for key, value in figures.items():
        print(f"{key:>16}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
