"""`maskmine export`: SA-1B JSON per image and COCO JSON, checked against the Parquet tables.

One pipeline run (tiny fixture model, three generated images and one bad file) is shared by
the module.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from exports.dataset import RunImage, load_run
from exports.inspect import run_facts
from exports.sa1b import json_names
from pipeline.cli import main

from .conftest import FIXTURES
from .helpers import BUCKET, FAST, read_table, scene

SA1B_IMAGE_KEYS = {"image_id", "width", "height", "file_name"}
SA1B_ANNOTATION_KEYS = {
    "id",
    "segmentation",
    "bbox",
    "area",
    "predicted_iou",
    "stability_score",
    "crop_box",
    "point_coords",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exports")
    images = root / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(scene(10 + i)).save(images / f"img_{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    output = root / "out"
    args = [
        "--runner=DirectRunner",
        f"--input={images}",
        f"--output={output}",
        f"--checkpoint={FIXTURES / 'sam_tiny.pth'}",
        "--run_id=exp",
        *FAST,
    ]
    assert main(args) == 0
    return output


def masks_by_id(output: Path) -> dict[str, dict]:
    return {m["mask_id"]: m for m in read_table(output, "masks").to_pylist()}


def decode(segmentation: dict) -> np.ndarray:
    return mask_utils.decode({"size": segmentation["size"], "counts": segmentation["counts"]})


def test_coco_export_loads_in_pycocotools_with_the_parquet_masks(run, tmp_path):
    dest = tmp_path / "coco" / "masks.json"
    assert main(["export", str(run), "--format", "coco", "--dest", str(dest)]) == 0
    coco = COCO(str(dest))
    parquet = masks_by_id(run)
    images = {r["image_uri"]: r for r in read_table(run, "images").to_pylist()}
    assert len(parquet) >= 3, "the run mined too few masks to test anything"
    assert len(coco.getAnnIds()) == len(parquet)
    assert len(coco.getImgIds()) == len(images) == 3  # the broken file is an error, not an image
    assert [c["id"] for c in coco.loadCats(coco.getCatIds())] == [1]
    for image in coco.loadImgs(coco.getImgIds()):
        row = images[image["coco_url"]]
        assert (image["width"], image["height"]) == (row["image_width"], row["image_height"])
        assert len(coco.getAnnIds(imgIds=[image["id"]])) == row["masks_kept"]
    seen = set()
    for ann in coco.loadAnns(coco.getAnnIds()):
        row = parquet[ann["mask_id"]]
        seen.add(ann["mask_id"])
        mask = coco.annToMask(ann)
        expected = decode(row["segmentation"])
        assert mask.shape == expected.shape
        np.testing.assert_array_equal(mask, expected)
        assert ann["area"] == row["area"] == int(mask.sum())
        assert ann["bbox"] == row["bbox"]
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
        assert ann["category_id"] == 1 and ann["iscrowd"] == 0
        assert coco.imgs[ann["image_id"]]["coco_url"] == row["image_uri"]
    assert seen == set(parquet)


def test_sa1b_export_writes_one_file_per_image_with_sa1b_fields(run, tmp_path):
    dest = tmp_path / "sa1b"
    assert main(["export", str(run), "--format", "sa1b", "--dest", str(dest)]) == 0
    files = sorted(dest.glob("*.json"))
    assert [f.name for f in files] == ["img_0.json", "img_1.json", "img_2.json"]
    parquet = masks_by_id(run)
    images = {r["image_uri"]: r for r in read_table(run, "images").to_pylist()}
    ann_ids, image_ids = [], []
    for path in files:
        record = json.loads(path.read_text())
        assert set(record) == {"image", "annotations"}
        image = record["image"]
        assert set(image) >= SA1B_IMAGE_KEYS
        row = images[image["image_uri"]]
        assert image["file_name"] == Path(row["image_uri"]).name == path.stem + ".png"
        assert (image["width"], image["height"]) == (row["image_width"], row["image_height"])
        assert len(record["annotations"]) == row["masks_kept"]
        image_ids.append(image["image_id"])
        for ann in record["annotations"]:
            assert set(ann) >= SA1B_ANNOTATION_KEYS
            mask_row = parquet[ann["mask_id"]]
            assert mask_row["image_uri"] == image["image_uri"]
            np.testing.assert_array_equal(
                decode(ann["segmentation"]), decode(mask_row["segmentation"])
            )
            for key in ("bbox", "area", "crop_box", "point_coords"):
                assert ann[key] == mask_row[key], key
            assert ann["predicted_iou"] == pytest.approx(mask_row["predicted_iou"])
            assert isinstance(ann["id"], int)
            ann_ids.append(ann["id"])
    assert len(ann_ids) == len(set(ann_ids)) == len(parquet)
    assert sorted(image_ids) == [1, 2, 3]


def test_a_remined_image_exports_only_its_newest_run(run, tmp_path):
    """Two runs into one folder (no --skip_existing) must not double an image's masks."""
    output = tmp_path / "twice"
    shutil.copytree(run, output)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    for table in ("images", "masks"):
        old = pq.read_table(next((output / table).glob("*.parquet")))
        first = old.column("image_uri")[0].as_py()
        new = old.filter(pc.equal(old.column("image_uri"), first))
        new = new.set_column(
            new.schema.get_field_index("run_id"), "run_id", pa.array(["again"] * len(new))
        )
        stamp = pa.array([later] * len(new), new.schema.field("created_at").type)
        new = new.set_column(new.schema.get_field_index("created_at"), "created_at", stamp)
        pq.write_table(new, output / table / "part-again-00000-of-00001.parquet")
    images = load_run(str(output))
    assert len(images) == 3
    remined = next(im for im in images if im.uri == first)
    assert remined.run_id == "again"
    assert remined.masks and all(m["run_id"] == "again" for m in remined.masks)
    before = [m for m in masks_by_id(run).values() if m["image_uri"] == first]
    assert len(remined.masks) == len(before)
    facts, _ = run_facts(str(output))  # inspect's summary counts the same way
    assert (facts.images, facts.masks) == (3, len(masks_by_id(run)))
    assert facts.run_ids == ["again", "exp"]


def test_sa1b_file_names_stay_unique_for_equal_names_in_different_folders():
    def image(i: int, uri: str) -> RunImage:
        return RunImage(i, uri, "0" * 64, 4, 4, "r", 0, [])

    images = [image(1, "gs://b/a/x.jpg"), image(2, "gs://b/b/x.jpg"), image(3, "/d/y.png")]
    assert json_names(images) == ["x_1.json", "x_2.json", "y.json"]


@pytest.mark.parametrize("command", ["export", "inspect"])
def test_a_missing_or_empty_run_folder_is_a_clear_error(command, tmp_path, capsys):
    extra = ["--format", "coco", "--dest", str(tmp_path / "c.json")] if command == "export" else []
    assert main([command, str(tmp_path / "nowhere"), *extra]) == 2
    err = capsys.readouterr().err
    assert f"maskmine {command}: error: {tmp_path / 'nowhere'}: no such run folder" in err
    assert "Traceback" not in err

    empty = tmp_path / "empty"
    (empty / "masks").mkdir(parents=True)
    (empty / "notes.txt").write_text("not a run\n")
    assert main([command, str(empty), *extra]) == 2
    err = capsys.readouterr().err
    assert "no maskmine tables here" in err and "Traceback" not in err
    assert not (tmp_path / "c.json").exists()


def test_export_needs_a_known_format(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(run), "--format", "yolo", "--dest", str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert "invalid choice: 'yolo'" in capsys.readouterr().err


def test_inspect_and_export_work_on_a_gs_run(run, request, tmp_path, capsys):
    """Tables, source images and outputs all on gs:// (a local GCS emulator)."""
    bucket = request.getfixturevalue("gcs")["bucket"]
    for path in (run.parent / "images").glob("img_*.png"):
        bucket.blob(f"src/{path.name}").upload_from_filename(str(path))
    for table in ("images", "masks", "errors"):
        for path in (run / table).glob("*.parquet"):
            data = pq.read_table(path)
            uris = [
                f"gs://{BUCKET}/src/{Path(u).name}" for u in data.column("image_uri").to_pylist()
            ]
            column = data.schema.get_field_index("image_uri")
            data = data.set_column(column, data.schema.field(column), pa.array(uris))
            buf = io.BytesIO()
            pq.write_table(data, buf)
            bucket.blob(f"run/{table}/{path.name}").upload_from_string(buf.getvalue())

    assert main(["inspect", f"gs://{BUCKET}/run", "--max_masks", "0"]) == 0
    written = {b.name for b in bucket.list_blobs(prefix="run/inspect/")}
    assert {"run/inspect/index.html", "run/inspect/summary.png"} <= written
    overlays = sorted(n for n in written if n.startswith("run/inspect/overlays/"))
    assert len(overlays) == 3
    picture = np.asarray(Image.open(io.BytesIO(bucket.blob(overlays[0]).download_as_bytes())))
    # The source was read from the bucket: not the grey stand-in for a missing source.
    assert (np.abs(picture[..., :3].astype(int) - 128).max(axis=2) > 10).mean() > 0.5
    assert (
        "source image unavailable" not in bucket.blob("run/inspect/index.html").download_as_text()
    )

    dest = f"gs://{BUCKET}/exports/coco.json"
    assert main(["export", f"gs://{BUCKET}/run", "--format", "coco", "--dest", dest]) == 0
    local = tmp_path / "coco.json"
    bucket.blob("exports/coco.json").download_to_filename(str(local))
    coco = COCO(str(local))
    assert len(coco.getAnnIds()) == len(masks_by_id(run))
    assert {im["coco_url"] for im in coco.loadImgs(coco.getImgIds())} == {
        f"gs://{BUCKET}/src/img_{i}.png" for i in range(3)
    }

    assert main(["export", f"gs://{BUCKET}/nothing", "--format", "sa1b", "--dest", "x"]) == 2
    assert f"gs://{BUCKET}/nothing: no such run folder" in capsys.readouterr().err


def test_tables_of_an_older_schema_version_still_read(tmp_path):
    # Schema 2 added images.prompts_decoded: an output folder written by both versions
    # reads as one table, with nulls where the older files have no such column.
    import datetime as dt

    from exports.tables import read_table as read_run_table
    from schemas import tables

    row = {
        "image_uri": "a.png",
        "image_sha256": "0" * 64,
        "image_width": 4,
        "image_height": 3,
        "masks_generated": 2,
        "masks_kept": 1,
        "prompts_decoded": 1024,
        "decode_seconds": 0.1,
        "inference_seconds": 0.2,
        "run_id": "new",
        "created_at": dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
    }
    (tmp_path / "images").mkdir()
    new = tables.to_table([row], tables.IMAGES_SCHEMA)
    pq.write_table(new, tmp_path / "images" / "part-new-00000-of-00001.parquet")
    old = tables.to_table([dict(row, image_uri="b.png", run_id="old")], tables.IMAGES_SCHEMA)
    pq.write_table(old.drop(["prompts_decoded"]), tmp_path / "images" / "part-old.parquet")
    table = read_run_table(str(tmp_path), "images").sort_by("image_uri")
    assert table.column("image_uri").to_pylist() == ["a.png", "b.png"]
    assert table.column("prompts_decoded").to_pylist() == [1024, None]
