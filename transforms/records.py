"""Plain records passed between the pipeline's transforms.

Module-level dataclasses of builtins and numpy arrays, so they pickle cleanly when Beam
ships them between workers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """An image ready for SAM.

    pixels: (height, width, 3) uint8 RGB, EXIF orientation applied (width/height are of the
    oriented image). sha256: hex digest of the file's bytes. decode_seconds: time spent
    decoding the bytes (not reading them), in seconds.
    """

    uri: str
    sha256: str
    width: int
    height: int
    pixels: np.ndarray = field(repr=False)
    decode_seconds: float = 0.0

    def __post_init__(self) -> None:
        shape = getattr(self.pixels, "shape", None)
        if shape != (self.height, self.width, 3) or self.pixels.dtype != np.uint8:
            raise ValueError(
                f"{self.uri}: pixels must be ({self.height}, {self.width}, 3) uint8, "
                f"got {shape} {getattr(self.pixels, 'dtype', type(self.pixels).__name__)}"
            )


@dataclass(frozen=True)
class Failure:
    """One input that could not be processed; becomes a row of the errors table.

    uri: the image URI, or the pattern / manifest that failed. stage: "read", "decode",
    "inference", ... error: a readable reason.
    """

    uri: str
    stage: str
    error: str

    def to_row(self, run_id: str, created_at: dt.datetime) -> dict[str, Any]:
        """Row of `schemas.tables.ERRORS_SCHEMA` (created_at: timezone-aware)."""
        return {
            "image_uri": self.uri,
            "stage": self.stage,
            "error": self.error,
            "run_id": run_id,
            "created_at": created_at,
        }


def outputs_getitem(self: tuple, key: int | slice | str) -> Any:
    """__getitem__ of the transforms' output NamedTuples: by position or by name.

    By name like Beam's tagged outputs (``out["errors"]``).
    """
    if isinstance(key, str):
        if key not in self._fields:
            raise KeyError(f"{key!r}: outputs are {list(self._fields)}")
        return getattr(self, key)
    return tuple.__getitem__(self, key)
