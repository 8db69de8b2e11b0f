"""Claiming a run id under an output, atomically, so that two runs cannot share one.

Checking that no file of the id exists yet races with a run that starts at the same
moment; the second run's finalize would then replace the first run's files. So a batch
run also creates OUTPUT/_runs/<run_id>.json with create-if-absent semantics (O_EXCL
locally, ifGenerationMatch=0 on GCS) before it reads anything. Readers never look
there (schemas/layout.py).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sys

from schemas import layout


class RunIdTaken(Exception):
    """Another run holds this run id under this output."""


def claim_run_id(output: str, run_id: str, local: bool = True) -> str:
    """Create the claim marker of `run_id` under `output`; its path. RunIdTaken if it
    exists already. local: the run executes in this process (not on Dataflow), so a later
    run on this host may tell from the pid whether it is still running (`is_dead`)."""
    path = layout.claim_path(output, run_id)
    record = json.dumps(
        {
            "run_id": run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "local": local,
            "argv": sys.argv,
            "claimed_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        }
    ).encode()
    if path.startswith("gs://"):
        _claim_gcs(path, record)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError as e:
            raise RunIdTaken(path) from e
        with os.fdopen(fd, "wb") as f:
            f.write(record)
    return path


def _claim_gcs(path: str, record: bytes) -> None:
    from google.api_core.exceptions import PreconditionFailed
    from google.cloud import storage

    bucket, name = path.removeprefix("gs://").split("/", 1)
    blob = storage.Client().bucket(bucket).blob(name)
    try:
        blob.upload_from_string(record, content_type="application/json", if_generation_match=0)
    except PreconditionFailed as e:
        raise RunIdTaken(path) from e


def read_claim(output: str, run_id: str) -> dict | None:
    """The claim record of `run_id` under `output`, or None if there is none (or it cannot
    be read)."""
    from apache_beam.io.filesystems import FileSystems

    try:
        with FileSystems.open(layout.claim_path(output, run_id)) as f:
            return json.loads(f.read())
    except Exception:
        return None


def is_dead(claim: dict) -> bool:
    """Whether the run of `claim` has certainly stopped: a local run of this host whose
    process is gone. Anything else (another host, a Dataflow job, an older record without
    the fields) may still be running."""
    if claim.get("local") is not True or claim.get("host") != socket.gethostname():
        return False
    pid = claim.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. EPERM: a process of another user holds that pid
        return False
    return False
