"""Table schemas: versions, validation of rows, Parquet round trips, deterministic mask ids."""

import copy
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.tables import (
    ERRORS_SCHEMA,
    IMAGES_SCHEMA,
    MASKS_SCHEMA,
    SCHEMA_VERSION,
    SCHEMAS,
    VERSION_KEY,
    mask_id,
    to_table,
)
from transforms.records import Failure

SHA = "ab" * 32
CREATED = dt.datetime(2025, 5, 1, 12, 30, 15, 123456, tzinfo=dt.timezone.utc)


def mask_row(**overrides) -> dict:
    row = {
        "mask_id": mask_id(SHA, "PPYo0", [0, 0, 64, 48], [[10.5, 20.25]]),
        "image_uri": "gs://bucket/a.jpg",
        "image_sha256": SHA,
        "image_width": 64,
        "image_height": 48,
        "segmentation": {"size": [48, 64], "counts": "PPYo0"},
        "bbox": [1.0, 2.0, 30.5, 20.0],
        "area": 512,
        "predicted_iou": 0.875,
        "stability_score": 0.96875,
        "point_coords": [[10.5, 20.25]],
        "crop_box": [0, 0, 64, 48],
        "parent_mask_id": None,
        "depth": 0,
        "model_type": "vit_b",
        "checkpoint_sha256": "cd" * 32,
        "generator_params": '{"points_per_side": 32}',
        "maskmine_version": "0.1.0",
        "run_id": "run-1",
        "created_at": CREATED,
    }
    row.update(overrides)
    return row


def image_row(**overrides) -> dict:
    row = {
        "image_uri": "/data/a.png",
        "image_sha256": SHA,
        "image_width": 640,
        "image_height": 480,
        "masks_generated": 120,
        "prompts_decoded": 1024,
        "masks_kept": 87,
        "decode_seconds": 0.012,
        "inference_seconds": 1.5,
        "run_id": "run-1",
        "created_at": CREATED,
    }
    row.update(overrides)
    return row


def error_row() -> dict:
    return Failure("/data/b.png", "decode", "truncated image").to_row("run-1", CREATED)


def test_every_schema_carries_its_version_and_name():
    assert SCHEMA_VERSION == 3
    for name, schema in SCHEMAS.items():
        assert schema.metadata[VERSION_KEY] == b"3"
        assert schema.metadata[b"maskmine.table"] == name.encode()
    assert MASKS_SCHEMA.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert MASKS_SCHEMA.field("segmentation").type.field("size").type.value_type == pa.int32()
    assert IMAGES_SCHEMA.field("masks_kept").type == pa.int32()
    assert ERRORS_SCHEMA.names == ["image_uri", "stage", "error", "run_id", "created_at"]


@pytest.mark.parametrize(
    "schema,rows",
    [
        (
            MASKS_SCHEMA,
            [
                mask_row(),
                mask_row(point_coords=[], area=0, bbox=[0, 0, 0, 0]),
                mask_row(parent_mask_id="f" * 32, depth=3),
            ],
        ),
        (IMAGES_SCHEMA, [image_row(), image_row(image_uri="/data/c.png", masks_kept=0)]),
        (ERRORS_SCHEMA, [error_row()]),
    ],
)
def test_parquet_round_trip_is_exact(tmp_path, schema, rows):
    table = to_table(rows, schema)
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    assert back.schema.equals(schema, check_metadata=True)
    assert back.equals(table)
    assert back.to_pylist()[0]["created_at"] == CREATED
    assert back.num_rows == len(rows)


def test_round_trip_values_and_numpy_scalars():
    row = mask_row(area=np.int64(512), predicted_iou=np.float32(0.875), image_width=np.int32(64))
    back = to_table([row], MASKS_SCHEMA).to_pylist()[0]
    assert back["area"] == 512 and back["image_width"] == 64
    assert back["predicted_iou"] == pytest.approx(0.875)
    assert back["segmentation"] == {"size": [48, 64], "counts": "PPYo0"}
    assert back["point_coords"] == [[10.5, 20.25]]


def test_empty_rows_give_an_empty_table_with_the_schema():
    table = to_table([], IMAGES_SCHEMA)
    assert table.num_rows == 0
    assert table.schema.equals(IMAGES_SCHEMA, check_metadata=True)


def test_failure_row_fits_the_errors_table():
    assert to_table([error_row()], ERRORS_SCHEMA).to_pylist() == [
        {
            "image_uri": "/data/b.png",
            "stage": "decode",
            "error": "truncated image",
            "run_id": "run-1",
            "created_at": CREATED,
        }
    ]


def test_missing_and_extra_fields_are_named():
    row = mask_row()
    del row["stability_score"]
    with pytest.raises(ValueError, match=r"row 0: missing field\(s\) \['stability_score'\]"):
        to_table([row], MASKS_SCHEMA)
    with pytest.raises(ValueError, match=r"row 1: unexpected field\(s\) \['score'\]"):
        to_table([image_row(), image_row(score=1.0)], IMAGES_SCHEMA)
    with pytest.raises(ValueError, match="row 0: expected a dict, got list"):
        to_table([list(image_row().values())], IMAGES_SCHEMA)


@pytest.mark.parametrize(
    "field,value,reason",
    [
        ("area", None, "must not be None"),
        ("area", "512", "expected an integer"),
        ("area", 1.5, "expected an integer"),
        ("image_width", True, "expected an integer"),
        ("predicted_iou", "high", "expected a number"),
        ("predicted_iou", float("nan"), "must not be NaN"),
        ("image_uri", 3, "expected a string"),
        ("bbox", [1.0, 2.0, 3.0], "expected 4 values"),
        ("bbox", "1,2,3,4", "expected a list"),
        ("created_at", dt.datetime(2025, 5, 1, 12), "expected a timezone-aware datetime"),
        ("created_at", "2025-05-01", "expected a datetime"),
        ("generator_params", "{points: 32", "not valid JSON"),
        ("depth", None, "must not be None"),
        ("parent_mask_id", 5, "expected a string"),
    ],
)
def test_bad_values_are_refused_naming_the_field(field, value, reason):
    rows = [mask_row(), mask_row(**{field: value})]
    with pytest.raises(ValueError, match=rf"row 1: field '{field}': {reason}"):
        to_table(rows, MASKS_SCHEMA)


def test_only_the_parent_mask_id_may_be_null():
    # Null has a meaning there (a mask at the top of its image); nowhere else.
    nullable = [f.name for schema in SCHEMAS.values() for f in schema if f.nullable]
    assert nullable == ["parent_mask_id"]
    table = to_table([mask_row(parent_mask_id=None)], MASKS_SCHEMA)
    assert table.column("parent_mask_id").to_pylist() == [None]


def test_nested_values_are_checked_with_their_path():
    with pytest.raises(ValueError, match=r"field 'crop_box\[3\]': expected an integer"):
        to_table([mask_row(crop_box=[0, 0, 64, 48.5])], MASKS_SCHEMA)
    with pytest.raises(ValueError, match=r"field 'point_coords\[1\]': expected 2 values"):
        to_table([mask_row(point_coords=[[1.0, 2.0], [3.0]])], MASKS_SCHEMA)
    with pytest.raises(ValueError, match=r"field 'segmentation.size': expected 2 values"):
        to_table([mask_row(segmentation={"size": [48], "counts": "x"})], MASKS_SCHEMA)
    with pytest.raises(ValueError, match=r"field 'segmentation': expected keys"):
        to_table([mask_row(segmentation={"size": [48, 64]})], MASKS_SCHEMA)
    with pytest.raises(ValueError, match=r"field 'segmentation.counts': expected a string"):
        to_table([mask_row(segmentation={"size": [48, 64], "counts": b"x"})], MASKS_SCHEMA)


def test_overflow_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="field 'image_width'"):
        to_table([mask_row(image_width=2**40)], MASKS_SCHEMA)


def test_validation_does_not_modify_rows():
    rows = [mask_row()]
    before = copy.deepcopy(rows)
    to_table(rows, MASKS_SCHEMA)
    assert rows == before


def test_mask_id_is_pinned_and_deterministic():
    args = ("0" * 63 + "1", "PPYo0", [0, 0, 64, 48], [[10.5, 20.25]])
    # Pinned: changing the canonical form changes every stored id; do it deliberately.
    assert mask_id(*args) == "97d2abe6dd3b383eac351de5e4d68cb0"
    assert mask_id(*args) == mask_id(*args)
    # Same values in other spellings give the same id.
    assert mask_id(args[0], b"PPYo0", np.array([0, 0, 64, 48]), np.array([[10.5, 20.25]])) == (
        mask_id(*args)
    )
    assert mask_id(args[0], "PPYo0", [0.0, 0, 64, 48], [(10.5, 20.25)]) == mask_id(*args)
    assert mask_id(SHA, "x", [0, 0, 1, 1], [[-0.0, 0.0]]) == mask_id(
        SHA, "x", [0, 0, 1, 1], [[0, 0]]
    )


def test_mask_id_with_the_image_uri_tells_two_uris_of_the_same_bytes_apart():
    args = (SHA, "PPYo0", [0, 0, 64, 48], [[10.5, 20.25]])
    a, b = mask_id(*args, image_uri="gs://b/a.jpg"), mask_id(*args, image_uri="gs://b/copy.jpg")
    assert a != b and mask_id(*args, image_uri="gs://b/a.jpg") == a
    assert a != mask_id(*args)  # a URI is never the same as no URI
    with pytest.raises(ValueError, match="image_uri must be a str"):
        mask_id(*args, image_uri=3)


def test_mask_id_changes_with_each_input():
    base = (SHA, "PPYo0", [0, 0, 64, 48], [[10.5, 20.25]])
    variants = [
        base,
        ("ac" * 32, *base[1:]),
        (SHA, "PPYo1", *base[2:]),
        (SHA, "PPYo0", [0, 0, 64, 49], base[3]),
        (SHA, "PPYo0", [1, 0, 64, 48], base[3]),
        (SHA, "PPYo0", base[2], [[10.5, 20.26]]),
        (SHA, "PPYo0", base[2], [[20.25, 10.5]]),
        (SHA, "PPYo0", base[2], [[10.5, 20.25], [1.0, 1.0]]),
        (SHA, "PPYo0", base[2], []),
    ]
    ids = [mask_id(*v) for v in variants]
    assert len(set(ids)) == len(variants)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


@pytest.mark.parametrize(
    "args,message",
    [
        (("a.jpg", "x", [0, 0, 1, 1], []), "image_sha256 must be 64 lowercase hex"),
        ((SHA.upper(), "x", [0, 0, 1, 1], []), "image_sha256 must be 64 lowercase hex"),
        ((SHA, 5, [0, 0, 1, 1], []), "rle_counts must be str or bytes"),
        ((SHA, "x", [0, 0, 1], []), "crop_box must be 4 integers"),
        ((SHA, "x", [0, 0, 1, 1.5], []), "crop_box must be 4 integers"),
        ((SHA, "x", ["a", 0, 1, 1], []), "must be numeric"),
        ((SHA, "x", [0, 0, 1, 1], [1.0, 2.0, 3.0]), r"point_coords must be finite \(K, 2\)"),
        ((SHA, "x", [0, 0, 1, 1], [[1.0, float("nan")]]), "point_coords must be finite"),
    ],
)
def test_mask_id_refuses_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        mask_id(*args)
