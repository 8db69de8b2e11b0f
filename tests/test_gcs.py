"""gs:// end to end against a GCS emulator the tests start themselves (gcp-storage-emulator).

Requests go through a small proxy in front of the emulator that can answer 503 to some of
them, to check that transient failures are retried without losing or duplicating rows.

Credentials: Beam asks google-auth for Application Default Credentials and, when there are
none, retries for ~20 s before going anonymous. GOOGLE_APPLICATION_CREDENTIALS here points
to an authorized-user file carrying an access token that never expires (google-auth reads
``token`` and ``expiry`` from it), so the lookup succeeds at once and nothing is refreshed
over the network; the emulator ignores the token.
"""

from __future__ import annotations

import io
import time

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main

from .conftest import FIXTURES
from .helpers import BUCKET, FAST, scene


def _upload_png(bucket, name: str, seed: int) -> str:
    buf = io.BytesIO()
    Image.fromarray(scene(seed)).save(buf, "PNG")
    bucket.blob(name).upload_from_string(buf.getvalue())
    return f"gs://{BUCKET}/{name}"


def _read_table(bucket, prefix: str) -> list[dict]:
    rows = []
    for blob in bucket.list_blobs(prefix=prefix):
        if blob.name.endswith(".parquet"):
            rows += pq.read_table(io.BytesIO(blob.download_as_bytes())).to_pylist()
    return rows


@pytest.fixture(scope="module")
def inputs(gcs):
    bucket = gcs["bucket"]
    bucket.blob("models/sam_tiny.pth").upload_from_filename(str(FIXTURES / "sam_tiny.pth"))
    good = [_upload_png(bucket, f"imgs/good_{i}.png", i) for i in range(3)]
    bucket.blob("imgs/text.png").upload_from_string(b"not an image")
    missing = f"gs://{BUCKET}/imgs/missing.png"
    bucket.blob("lists/uris.txt").upload_from_string(f"{missing}\n../imgs/good_0.png\n")
    return {"good": good, "bad": f"gs://{BUCKET}/imgs/text.png", "missing": missing}


def _args(output: str, run_id: str) -> list[str]:
    return [
        "--runner=DirectRunner",
        f"--input=gs://{BUCKET}/imgs/",
        f"--input=gs://{BUCKET}/lists/uris.txt",
        f"--output=gs://{BUCKET}/{output}",
        f"--checkpoint=gs://{BUCKET}/models/sam_tiny.pth",
        f"--run_id={run_id}",
        *FAST,
    ]


def test_gs_inputs_checkpoint_and_outputs_end_to_end(gcs, inputs):
    assert main(_args("out", "g1")) == 0
    images = _read_table(gcs["bucket"], "out/images/")
    errors = {r["image_uri"]: r for r in _read_table(gcs["bucket"], "out/errors/")}
    masks = _read_table(gcs["bucket"], "out/masks/")
    assert sorted(r["image_uri"] for r in images) == inputs["good"]
    assert set(errors) == {inputs["bad"], inputs["missing"]}
    assert (errors[inputs["missing"]]["stage"], errors[inputs["bad"]]["stage"]) == (
        "read",
        "decode",
    )
    assert "file not found" in errors[inputs["missing"]]["error"]
    assert {m["image_uri"] for m in masks} == set(inputs["good"])
    assert all(m["run_id"] == "g1" and m["checkpoint_sha256"] for m in masks)


@pytest.mark.parametrize("flag", ["--output", "--input", "--checkpoint"])
def test_a_missing_bucket_is_a_clear_startup_error(gcs, inputs, flag, capsys):
    args = {
        "--output": f"--output=gs://{BUCKET}/out-x",
        "--input": f"--input=gs://{BUCKET}/imgs/",
        "--checkpoint": f"--checkpoint=gs://{BUCKET}/models/sam_tiny.pth",
    }
    args[flag] = f"{flag}=gs://no-such-bucket/x/"
    start = time.monotonic()
    assert main(["--runner=DirectRunner", *args.values(), *FAST]) == 2
    assert time.monotonic() - start < 10
    assert f"{flag} gs://no-such-bucket/x/: bucket gs://no-such-bucket does not exist" in (
        capsys.readouterr().err
    )


def test_transient_503s_are_retried_without_losing_or_duplicating_rows(gcs, inputs):
    proxy = gcs["proxy"]
    before = proxy.injected
    proxy.fail_every = 4
    try:
        assert main(_args("flaky", "g2")) == 0
    finally:
        proxy.fail_every = 0
    assert proxy.injected - before >= 5, "the proxy injected too few failures to test anything"
    images = _read_table(gcs["bucket"], "flaky/images/")
    errors = _read_table(gcs["bucket"], "flaky/errors/")
    assert sorted(r["image_uri"] for r in images) == inputs["good"]
    assert sorted(r["image_uri"] for r in errors) == sorted([inputs["bad"], inputs["missing"]])
    masks = _read_table(gcs["bucket"], "flaky/masks/")
    ids = [m["mask_id"] for m in masks]
    assert len(ids) == len(set(ids)) and {m["image_uri"] for m in masks} == set(inputs["good"])
    reference = sorted(m["mask_id"] for m in _read_table(gcs["bucket"], "out/masks/"))
    if reference:  # the clean run of this module: the same masks
        assert sorted(ids) == reference


@pytest.mark.parametrize("flag", ["--checkpoint", "--input", "--output"])
def test_an_endpoint_that_refuses_fails_fast_naming_the_flag(tmp_path, monkeypatch, capsys, flag):
    # Nothing listens on the port: the client's own retries took ~170 s to say so.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    args = {
        "--checkpoint": f"--checkpoint={FIXTURES / 'sam_tiny.pth'}",
        "--input": f"--input={tmp_path / 'in'}",
        "--output": f"--output={tmp_path / 'out'}",
    }
    args[flag] = f"{flag}=gs://{BUCKET}/x/"
    start = time.monotonic()
    assert main(["--runner=DirectRunner", *args.values(), *FAST]) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert f"{flag} gs://{BUCKET}/x/: the GCS endpoint http://127.0.0.1:{port}" in err
    assert "(from STORAGE_EMULATOR_HOST) does not answer (connection refused" in err
    assert not (tmp_path / "out").exists()  # nothing written anywhere


def test_an_endpoint_that_accepts_but_never_answers_fails_within_the_bound(monkeypatch):
    # Connections are accepted (the kernel's backlog) but no byte ever comes back.
    import socket

    from transforms import uris

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setattr(uris, "GCS_ATTEMPT_SECONDS", 1.0)
        start = time.monotonic()
        problem = uris.endpoint_problem(seconds=3.0)
        took = time.monotonic() - start
    assert problem is not None and "no answer within 1 s" in problem, problem
    assert 2.0 < took < 6.0, took


def test_an_endpoint_that_answers_anything_passes(gcs):
    # The emulator (behind the test proxy) answers; whatever the status, it is reachable.
    from transforms.uris import endpoint_problem

    assert endpoint_problem(seconds=5.0) is None
