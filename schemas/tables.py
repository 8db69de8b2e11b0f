"""Versioned pyarrow schemas of the masks, images and errors tables, and row validation.

Every schema carries ``maskmine.schema_version`` (and ``maskmine.table``) in its metadata,
so a reader can tell which layout a Parquet file was written with. Fields are non-nullable
except where null has a meaning (``masks.parent_mask_id``: a mask at the top of its image).
Per-field metadata holds a short ``doc`` and, where it applies, ``maskmine.shape`` (list
lengths, ``*`` = any, e.g. ``b"*,2"`` for a list of (x, y) pairs) and ``maskmine.format``
(``json`` for strings that must parse as JSON); `to_table` enforces both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 3  # 2: images.prompts_decoded; 3: masks.parent_mask_id, masks.depth
VERSION_KEY = b"maskmine.schema_version"
TABLE_KEY = b"maskmine.table"
_SHAPE_KEY = b"maskmine.shape"
_FORMAT_KEY = b"maskmine.format"

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MASK_ID_HEX_CHARS = 32
# Versioned apart from the schema: a new column must not change every existing mask's id.
_MASK_ID_SALT = "maskmine.mask_id.v1"
_MASK_ID_SALT_URI = "maskmine.mask_id.v2"  # with the image URI


def _field(
    name: str,
    type_: pa.DataType,
    doc: str,
    shape: str | None = None,
    fmt: str | None = None,
    nullable: bool = False,
) -> pa.Field:
    meta = {b"doc": doc.encode()}
    if shape is not None:
        meta[_SHAPE_KEY] = shape.encode()
    if fmt is not None:
        meta[_FORMAT_KEY] = fmt.encode()
    return pa.field(name, type_, nullable=nullable, metadata=meta)


def _schema(table: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(
        fields, metadata={VERSION_KEY: str(SCHEMA_VERSION).encode(), TABLE_KEY: table.encode()}
    )


_UTC_US = pa.timestamp("us", tz="UTC")


def _list(value_type: pa.DataType) -> pa.ListType:
    # Items named "element", as Parquet's list layout names them: the schema read back from a
    # Parquet file then equals the one written. Items are non-null, like every field.
    return pa.list_(pa.field("element", value_type, nullable=False))


def _image_fields() -> list[pa.Field]:
    return [
        _field("image_uri", pa.string(), "URI the image was read from"),
        _field("image_sha256", pa.string(), "sha256 (hex) of the image file's bytes"),
        _field("image_width", pa.int32(), "decoded width in pixels, after EXIF orientation"),
        _field("image_height", pa.int32(), "decoded height in pixels, after EXIF orientation"),
    ]


def _run_fields() -> list[pa.Field]:
    return [
        _field("run_id", pa.string(), "identifier of the pipeline run"),
        _field("created_at", _UTC_US, "when the row was produced (UTC)"),
    ]


SEGMENTATION_TYPE = pa.struct(
    [
        _field("size", _list(pa.int32()), "mask (height, width) in pixels", shape="2"),
        _field("counts", pa.string(), "COCO compressed RLE counts"),
    ]
)

MASKS_SCHEMA = _schema(
    "masks",
    [
        _field("mask_id", pa.string(), "deterministic id, see schemas.tables.mask_id"),
        *_image_fields(),
        _field("segmentation", SEGMENTATION_TYPE, "COCO compressed RLE of the mask"),
        _field("bbox", _list(pa.float64()), "mask box XYWH in pixels", shape="4"),
        _field("area", pa.int64(), "mask area in pixels"),
        _field("predicted_iou", pa.float32(), "SAM's predicted IoU of the mask"),
        _field("stability_score", pa.float32(), "IoU of the mask at two logit thresholds"),
        _field(
            "point_coords",
            _list(_list(pa.float64())),
            "prompt points [[x, y], ...] in image pixels",
            shape="*,2",
        ),
        _field("crop_box", _list(pa.int32()), "crop the mask came from, XYWH px", shape="4"),
        _field(
            "parent_mask_id",
            pa.string(),
            "smallest larger mask of the image holding >= 90% of this one; null at the top",
            nullable=True,
        ),
        _field("depth", pa.int32(), "steps up the parent_mask_id chain to the top (0 at the top)"),
        _field("model_type", pa.string(), "SAM variant, e.g. vit_h"),
        _field("checkpoint_sha256", pa.string(), "sha256 (hex) of the checkpoint file"),
        _field("generator_params", pa.string(), "mask generator parameters", fmt="json"),
        _field("maskmine_version", pa.string(), "version of maskmine that wrote the row"),
        *_run_fields(),
    ],
)

IMAGES_SCHEMA = _schema(
    "images",
    [
        *_image_fields(),
        _field("masks_generated", pa.int32(), "masks out of the generator, before filters"),
        _field("masks_kept", pa.int32(), "masks written, after the pipeline's filters"),
        _field(
            "prompts_decoded",
            pa.int32(),
            "point prompts the generator decoded for the image (all crops)",
        ),
        _field("decode_seconds", pa.float64(), "time spent decoding the image (s)"),
        _field("inference_seconds", pa.float64(), "time spent in SAM for the image (s)"),
        *_run_fields(),
    ],
)

ERRORS_SCHEMA = _schema(
    "errors",
    [
        _field("image_uri", pa.string(), "input that failed (URI, pattern or manifest)"),
        _field("stage", pa.string(), "stage that failed: read, decode, inference, ..."),
        _field("error", pa.string(), "readable reason"),
        *_run_fields(),
    ],
)

EMBEDDINGS_SCHEMA = _schema(
    "embeddings",
    [
        _field("image_uri", pa.string(), "image the embedding is of"),
        _field("image_sha256", pa.string(), "sha256 (hex) of the image file bytes"),
        _field("model_type", pa.string(), "SAM variant, e.g. vit_h"),
        _field("checkpoint_sha256", pa.string(), "sha256 (hex) of the checkpoint file"),
        _field(
            "input_size",
            _list(pa.int32()),
            "(height, width) of the resized image inside the padded encoder input",
            shape="2",
        ),
        _field("shape", _list(pa.int32()), "embedding shape (C, h, w)", shape="3"),
        _field("embedding", pa.binary(), "float16 little-endian, C order, of `shape`"),
        *_run_fields(),
    ],
)

SCHEMAS: dict[str, pa.Schema] = {
    "masks": MASKS_SCHEMA,
    "images": IMAGES_SCHEMA,
    "errors": ERRORS_SCHEMA,
    "embeddings": EMBEDDINGS_SCHEMA,
}


def mask_id(
    image_sha256: str,
    rle_counts: str | bytes,
    crop_box: Sequence[int],
    point_coords: Sequence[Sequence[float]] | np.ndarray,
    image_uri: str | None = None,
) -> str:
    """Deterministic id of a mask: sha256 of a canonical JSON string, first 32 hex chars.

    Same image bytes, RLE, crop box (XYWH px) and prompt points (K, 2), and image URI
    when given (the pipeline always gives it: the same bytes under two URIs are two
    images) -> same id, on any machine and any run. Integral-valued floats in `crop_box`
    and numpy scalars are accepted; RLE counts may be the bytes pycocotools returns.
    """
    if not isinstance(image_sha256, str) or not _SHA256_HEX.match(image_sha256):
        raise ValueError(f"image_sha256 must be 64 lowercase hex characters, got {image_sha256!r}")
    if isinstance(rle_counts, bytes):
        rle_counts = rle_counts.decode("ascii")
    if not isinstance(rle_counts, str):
        raise ValueError(f"rle_counts must be str or bytes, got {type(rle_counts).__name__}")
    try:
        box = np.asarray(crop_box, dtype=np.float64)
        points = np.asarray(point_coords, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"crop_box and point_coords must be numeric arrays: {e}") from e
    if box.shape != (4,) or not np.all(np.round(box) == box):
        raise ValueError(f"crop_box must be 4 integers (XYWH), got {crop_box!r}")
    if points.size == 0:
        points = points.reshape(0, 2)
    if points.ndim != 2 or points.shape[1] != 2 or not np.all(np.isfinite(points)):
        raise ValueError(f"point_coords must be finite (K, 2) xy, got {point_coords!r}")
    # + 0.0 turns -0.0 into 0.0 so that both spell the same; floats are written by repr.
    if image_uri is not None and not isinstance(image_uri, str):
        raise ValueError(f"image_uri must be a str, got {type(image_uri).__name__}")
    canonical = json.dumps(
        [
            _MASK_ID_SALT if image_uri is None else _MASK_ID_SALT_URI,
            *([] if image_uri is None else [image_uri]),
            image_sha256,
            rle_counts,
            [int(v) for v in box],
            [[float(x) + 0.0, float(y) + 0.0] for x, y in points],
        ],
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:MASK_ID_HEX_CHARS]


def to_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Validate `rows` (dicts keyed by the schema's field names) and build a table.

    Raises ValueError naming the row and field for a missing or unexpected field, a None,
    a value of the wrong type, a list of the wrong length, a naive datetime or invalid JSON.
    """
    for i, row in enumerate(rows):
        check_row(row, schema, f"row {i}")
    arrays = []
    for field in schema:
        try:
            arrays.append(pa.array([row[field.name] for row in rows], type=field.type))
        except (pa.ArrowException, OverflowError) as e:
            raise ValueError(f"field {field.name!r}: {e}") from e
    return pa.Table.from_arrays(arrays, schema=schema)


def check_row(row: dict[str, Any], schema: pa.Schema, where: str = "row") -> None:
    """Raise ValueError naming `where` and the field unless `row` fits `schema` (the
    checks of `to_table`, for one row: batch sinks validate each row as they write)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a dict, got {type(row).__name__}")
    expected = schema.names
    if row.keys() != set(expected):
        missing = sorted(set(expected) - row.keys())
        extra = sorted(row.keys() - set(expected), key=str)
        parts = [f"missing field(s) {missing}"] if missing else []
        parts += [f"unexpected field(s) {extra}"] if extra else []
        raise ValueError(f"{where}: {', '.join(parts)}")
    for field in schema:
        _check(field, row[field.name], field.name, where)


def _check(field: pa.Field, value: Any, path: str, where: str) -> None:
    """Raise ValueError if `value` does not fit `field` (type, shape, format)."""
    if value is None and field.nullable:
        return
    meta = field.metadata or {}
    shape = meta.get(_SHAPE_KEY, b"").decode().split(",") if _SHAPE_KEY in meta else []
    _check_value(field.type, value, path, where, shape)
    if meta.get(_FORMAT_KEY) == b"json":
        try:
            json.loads(value)
        except ValueError as e:
            raise ValueError(f"{where}: field {path!r}: not valid JSON ({e})") from e


def _check_value(type_: pa.DataType, value: Any, path: str, where: str, shape: list[str]) -> None:
    def fail(reason: str) -> ValueError:
        return ValueError(f"{where}: field {path!r}: {reason}, got {value!r:.80}")

    if value is None:
        raise fail("must not be None")
    if pa.types.is_integer(type_):
        # bool is an int subclass and pyarrow truncates 1.5 to 1: refuse both.
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
            raise fail(f"expected an integer ({type_})")
    elif pa.types.is_floating(type_):
        if isinstance(value, bool | np.bool_) or not isinstance(
            value, int | float | np.integer | np.floating
        ):
            raise fail(f"expected a number ({type_})")
    elif pa.types.is_string(type_):
        if not isinstance(value, str):
            raise fail("expected a string")
    elif pa.types.is_timestamp(type_):
        if not isinstance(value, dt.datetime):
            raise fail("expected a datetime")
        if type_.tz is not None and value.tzinfo is None:
            # pyarrow would read a naive local time as UTC and shift it silently.
            raise fail("expected a timezone-aware datetime")
    elif pa.types.is_list(type_):
        if not isinstance(value, list | tuple | np.ndarray):
            raise fail("expected a list")
        if shape and shape[0] != "*" and len(value) != int(shape[0]):
            raise fail(f"expected {shape[0]} values")
        for j, item in enumerate(value):
            _check_value(type_.value_type, item, f"{path}[{j}]", where, shape[1:])
    elif pa.types.is_struct(type_):
        if not isinstance(value, dict):
            raise fail("expected a dict")
        names = {type_.field(k).name for k in range(type_.num_fields)}
        if value.keys() != names:
            raise fail(f"expected keys {sorted(names)}")
        for k in range(type_.num_fields):
            child = type_.field(k)
            _check(child, value[child.name], f"{path}.{child.name}", where)
    if isinstance(value, float | np.floating) and math.isnan(value):
        raise fail("must not be NaN")
