"""Helpers shared by the test modules (test modules never import each other).

Fixtures are in conftest.py; plain functions, constants and the GCS emulator's pieces here.
"""

from __future__ import annotations

import http.client
import http.server
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

# Permissive generator settings on the tiny random-weight model: a few masks per
# image, quickly. fp32: the tests compare with the exact model on any CPU (--precision
# auto would pick bf16 on an AMX machine; tests/test_precision.py covers auto).
FAST = [
    "--precision=fp32",
    "--points_per_side=6",
    "--pred_iou_thresh=0",
    "--stability_score_thresh=0",
    "--inference_batch_size=2",
]


def scene(seed: int, size=(60, 80)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8) + rng.integers(0, 60, 3, dtype=np.uint8)
    for _ in range(3):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(5, 20)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.integers(80, 255, 3)
    return img


def read_table(output: Path, name: str):
    files = sorted((output / name).glob("*.parquet"))
    assert files, f"no {name} files under {output}"
    return pq.read_table([str(f) for f in files]) if len(files) > 1 else pq.read_table(files[0])


BUCKET = "maskmine-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"emulator exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"emulator not listening on {port} after {seconds} s")


class FaultyProxy(http.server.ThreadingHTTPServer):
    """Forwards HTTP to the emulator; with fail_every = n, answers every n-th request 503."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.fail_every = 0
        self.requests = 0
        self.injected = 0
        self.lock = threading.Lock()

    def should_fail(self) -> bool:
        with self.lock:
            self.requests += 1
            if self.fail_every and self.requests % self.fail_every == 0:
                self.injected += 1
                return True
            return False


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.server.should_fail():
            payload = b'{"error": {"code": 503, "message": "injected by the test proxy"}}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        upstream.request(self.command, self.path, body=body, headers=headers)
        response = upstream.getresponse()
        data = response.read()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        upstream.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward
