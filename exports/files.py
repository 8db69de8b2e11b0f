"""Write export files through Beam's FileSystems, so a destination may be local or gs://."""

from __future__ import annotations

import json
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path`, replacing it; local parent folders are created."""
    # UNCOMPRESSED: a name ending in .gz must hold exactly these bytes.
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def write_json(path: str, obj: Any) -> None:
    """`obj` as compact UTF-8 JSON at `path`."""
    write_bytes(path, json.dumps(obj, separators=(",", ":")).encode())


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode())
