"""The records passed between the pipeline's transforms: the one owner of each type.

URI (str) -> `DecodedImage` -> `MinedImage` (SAM's masks, then filtered) -> table rows
(transforms/rows.py), with a `Failure` for every input that drops out and the run's
`Provenance` stamped on each row. Module-level dataclasses of builtins and numpy arrays
(no torch), so they pickle cleanly when Beam ships them between workers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Output tag of the Failures a transform emits beside its main output.
ERRORS = "errors"


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


@dataclass
class MinedImage:
    """Masks of one image, as the generator's records (coco_rle segmentation).

    masks_generated counts the generator's output before the pipeline's own
    filters; `masks` shrinks as they run. model_type and checkpoint_sha256 say
    which weights produced them. Times in seconds.
    """

    uri: str
    sha256: str
    width: int
    height: int
    masks: list[dict]
    masks_generated: int
    decode_seconds: float
    inference_seconds: float
    model_type: str
    checkpoint_sha256: str
    # Whole-image embedding (C, h, w) float16 and the resized (h, w) inside the
    # encoder input, when the run keeps embeddings.
    embedding: np.ndarray | None = None
    input_size: tuple[int, int] | None = None
    # How the model ran: precision actually used ("fp32"/"bf16"), device, torch version.
    runtime: dict[str, str] = field(default_factory=dict)
    # Point prompts the generator decoded (all crops): fewer in the adaptive mode.
    prompts_decoded: int = 0


@dataclass(frozen=True)
class Provenance:
    """Run-level facts stamped on every row."""

    run_id: str
    generator_params: str  # canonical JSON
    maskmine_version: str
    created_at: dt.datetime

    def stamped(self) -> Provenance:
        """The same facts with created_at = now (rows of a long streaming job)."""
        return dataclasses.replace(self, created_at=dt.datetime.now(dt.timezone.utc))


def outputs_getitem(self: tuple, key: int | slice | str) -> Any:
    """__getitem__ of the transforms' output NamedTuples: by position or by name.

    By name like Beam's tagged outputs (``out["errors"]``).
    """
    if isinstance(key, str):
        if key not in self._fields:
            raise KeyError(f"{key!r}: outputs are {list(self._fields)}")
        return getattr(self, key)
    return tuple.__getitem__(self, key)
