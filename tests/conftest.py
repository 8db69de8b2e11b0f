"""Fixtures shared by the test modules (plain helpers: tests/helpers.py)."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from .helpers import BUCKET, FaultyProxy, free_port, wait_for_port

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    # CI has 2 cores; more threads only oversubscribe.
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    """Official-format state dict of a tiny config (see scripts/seeded.py)."""
    return FIXTURES / "sam_tiny.pth"


@pytest.fixture(scope="session")
def golden() -> dict:
    """Reference (segment-anything 1.0) outputs on the tiny checkpoint."""
    return torch.load(FIXTURES / "sam_tiny_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A GCS emulator behind a FaultyProxy, with the environment pointing at it."""
    root = tmp_path_factory.mktemp("gcs")
    adc = root / "adc.json"
    adc.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "emulator",
                "client_secret": "emulator",
                "refresh_token": "emulator",
                "token": "emulator",
                "expiry": "2999-01-01T00:00:00Z",
            }
        )
    )
    port = free_port()
    emulator = Path(sys.executable).parent / "gcp-storage-emulator"
    process = subprocess.Popen(
        [str(emulator), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proxy = FaultyProxy(port)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    with pytest.MonkeyPatch.context() as env:
        try:
            wait_for_port(port, process)
            thread.start()
            env.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{proxy.server_address[1]}")
            env.setenv("NO_GCE_CHECK", "true")
            env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
            env.setenv("GOOGLE_CLOUD_PROJECT", "maskmine-test")
            from google.cloud import storage

            client = storage.Client()
            client.create_bucket(BUCKET)
            yield {"client": client, "bucket": client.bucket(BUCKET), "proxy": proxy}
        finally:
            proxy.shutdown()
            process.terminate()
            process.wait(timeout=10)
