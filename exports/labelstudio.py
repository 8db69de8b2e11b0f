"""Label Studio export: one task per image, its masks as pre-annotations to review.

DEST/labeling_config.xml is the project's labeling config (an Image and a BrushLabels
tag); DEST/tasks-NNNNN.json are JSON lists of tasks to import with it, each
    {"data": {"image": URL, "image_uri", "image_id"},
     "predictions": [{"model_version", "score" (mean of the results'),
                      "result": [{"id": mask_id, "type": "brushlabels", "from_name": "mask",
                                  "to_name": "image", "original_width", "original_height",
                                  "image_rotation": 0, "score": predicted IoU in [0, 1],
                                  "value": {"format": "rle", "rle": [bytes...],
                                            "brushlabels": ["object"]}}]}]}.

The brush RLE is Label Studio's (thi.ng rle-pack over the RGBA bytes of a row-major
mask, 255 inside, as `label_studio_converter.brush.mask2rle` writes it); it is encoded
here, vectorised, byte for byte what that function gives (tests/test_labelstudio.py checks
both ways), because the converter builds a Python string of bits and brings pandas and
nltk with it.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from pycocotools import mask as mask_utils

from .dataset import RunImage
from .files import write_text

FROM_NAME, TO_NAME, LABEL = "mask", "image", "object"
LABELING_CONFIG = f"""<View>
  <Image name="{TO_NAME}" value="$image" zoom="true"/>
  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">
    <Label value="{LABEL}" background="#1f77b4"/>
  </BrushLabels>
</View>
"""
DEFAULT_TASKS_PER_FILE = 500
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# rle-pack's run-length field widths (bits) and their 2-bit selectors, as Label Studio's.
_RLE_SIZES = (3, 4, 8, 16)
_WORD = 8


def _bits(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """(sum(widths),) uint8 0/1: each code written MSB first in its width (<= 32 bits)."""
    if codes.size == 0:
        return np.zeros(0, np.uint8)
    top = int(widths.max())
    shifts = widths[:, None] - 1 - np.arange(top)[None]  # (T, top); < 0 past a code's end
    bits = (codes[:, None] >> np.clip(shifts, 0, None)) & 1
    return bits[shifts >= 0].astype(np.uint8)


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of an (H, W) bool/0-1 mask: the bytes of rle-pack over the
    mask's RGBA pixels (row-major, 255 inside on all four channels), as ints 0..255."""
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        raise ValueError("empty mask (0 pixels)")
    num = 4 * flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = 4 * np.diff(np.concatenate([starts, [flat.size]])).astype(np.int64)
    values = np.where(flat[starts], 255, 0).astype(np.int64)
    # A run over 2**16 is written as full 2**16 chunks then the rest, like rle-pack.
    chunks = np.maximum(0, -(-lengths // 2**16) - 1)
    run = np.repeat(np.arange(len(lengths)), chunks + 1)  # the run of each token
    run_len = np.full(len(run), 2**16, dtype=np.int64)
    run_len[np.cumsum(chunks + 1) - 1] = lengths - chunks * 2**16
    run_val = values[run]
    single = run_len == 1
    # Selector: the smallest field that holds length - 1; every token of a run over 256
    # takes the 16-bit one, as the converter writes it (a shorter one would decode the same).
    sel = np.searchsorted(np.array([2**s for s in _RLE_SIZES]), run_len, side="left")
    sel = np.where(lengths[run] > 2 ** _RLE_SIZES[2], 3, np.where(single, 0, sel))
    field = np.array(_RLE_SIZES)[sel]
    flag = np.where(single, 0, 1)
    # Token: repeat flag, 2-bit selector, length - 1 (single: field of zeros), the value.
    length_bits = np.where(single, 0, run_len - 1)
    widths = 1 + 2 + field + _WORD
    codes = (flag << (2 + field + _WORD)) | (sel << (field + _WORD)) | (length_bits << _WORD)
    codes = codes | run_val
    header_codes = np.array([num, _WORD - 1, *[s - 1 for s in _RLE_SIZES]], dtype=np.int64)
    header_widths = np.array([32, 5, 4, 4, 4, 4], dtype=np.int64)
    bits = np.concatenate([_bits(header_codes, header_widths), _bits(codes, widths)])
    # Label Studio pads to whole bytes with 8 - len % 8 zeros: a full byte when it fits.
    bits = np.concatenate([bits, np.zeros(8 - len(bits) % 8, np.uint8)])
    return np.packbits(bits).tolist()


def brush_rle_of(segmentation: dict) -> list[int]:
    """The brush RLE of a masks-table segmentation (COCO RLE, column-major)."""
    rle = {"size": list(segmentation["size"]), "counts": segmentation["counts"]}
    return brush_rle(mask_utils.decode(rle))


def image_url(uri: str, local_root: str | None = "/") -> str:
    """The task's image URL: gs:// and http(s) URIs unchanged (Label Studio reads gs://
    through a connected Google Cloud Storage source), a local path as Label Studio's
    local-files URL relative to `local_root` (its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT).
    Raises ValueError for a local path outside `local_root`."""
    if _URL.match(uri):
        return uri
    path, root = os.path.abspath(uri), os.path.abspath(local_root or "/")
    if os.path.commonpath([path, root]) != root:
        raise ValueError(f"{uri} is not under --local_files_root {root}")
    return "/data/local-files/?d=" + urllib.parse.quote(os.path.relpath(path, root))


def _score(predicted_iou: float) -> float:
    # SAM's predicted IoU is a regression output that can leave [0, 1]; Label Studio
    # refuses a score outside it.
    return min(max(float(predicted_iou), 0.0), 1.0)


def task(image: RunImage, local_root: str | None = "/") -> dict[str, Any]:
    """The Label Studio task of one image with its masks as one prediction; scores are
    the predicted IoUs clipped to [0, 1] (Label Studio's range)."""
    results = [
        {
            "id": m["mask_id"],
            "type": "brushlabels",
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "original_width": image.width,
            "original_height": image.height,
            "image_rotation": 0,
            "score": _score(m["predicted_iou"]),
            "value": {
                "format": "rle",
                "rle": brush_rle_of(m["segmentation"]),
                "brushlabels": [LABEL],
            },
        }
        for m in image.masks
    ]
    scores = [r["score"] for r in results]
    model = {(m["model_type"], m["checkpoint_sha256"][:12]) for m in image.masks}
    return {
        "data": {
            "image": image_url(image.uri, local_root),
            "image_uri": image.uri,
            "image_id": image.image_id,
        },
        "predictions": [
            {
                "model_version": "maskmine " + " ".join(f"{t} {c}" for t, c in sorted(model)),
                "score": float(np.mean(scores)) if scores else 0.0,
                "result": results,
            }
        ],
    }


class _TaskFiles:
    """JSON lists of tasks, `per_file` to a file, written as they come (one task in memory)."""

    def __init__(self, dest: str, per_file: int) -> None:
        self.dest, self.per_file = dest, per_file
        self.paths: list[str] = []
        self._file, self._in_file = None, 0

    def add(self, obj: dict[str, Any]) -> None:
        if self._file is None or self._in_file == self.per_file:
            self.close()
            path = FileSystems.join(self.dest, f"tasks-{len(self.paths):05d}.json")
            self._file = FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)
            self._file.write(b"[")
            self.paths.append(path)
            self._in_file = 0
        self._file.write((b"," if self._in_file else b"") + json.dumps(obj).encode())
        self._in_file += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.write(b"]\n")
            self._file.close()
            self._file = None


def export_labelstudio(
    images: Iterable[RunImage],
    dest: str,
    local_root: str | None = "/",
    tasks_per_file: int = DEFAULT_TASKS_PER_FILE,
) -> list[str]:
    """Write DEST/labeling_config.xml and DEST/tasks-NNNNN.json (local or gs://) from
    `images` (streamed); return the task files' paths."""
    if tasks_per_file < 1:
        raise ValueError(f"--tasks_per_file must be at least 1, got {tasks_per_file}")
    write_text(FileSystems.join(dest, "labeling_config.xml"), LABELING_CONFIG)
    files = _TaskFiles(dest, tasks_per_file)
    try:
        for image in images:
            files.add(task(image, local_root))
    finally:
        files.close()
    return files.paths
