"""`maskmine export`: SA-1B JSON per image, COCO JSON, Label Studio tasks and SA-1B tar
shards, checked against the Parquet tables.

One pipeline run (tiny fixture model, three generated images and one bad file) is shared by
the module.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import xml.etree.ElementTree as ET
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


def test_every_format_refuses_a_folder_with_no_run(tmp_path, capsys):
    from exports.commands import FORMATS

    assert set(FORMATS) == {"sa1b", "coco", "labelstudio", "sa1b-tar"}
    (tmp_path / "empty" / "images").mkdir(parents=True)
    for fmt in FORMATS:
        for folder in ("nowhere", "empty"):
            dest = tmp_path / f"dest-{fmt}"
            args = ["export", str(tmp_path / folder), "--format", fmt, "--dest", str(dest)]
            assert main(args) == 2, (fmt, folder)
            err = capsys.readouterr().err
            assert err.startswith("maskmine export: error: ") and "Traceback" not in err
            assert not dest.exists()


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

    # Label Studio tasks and SA-1B shards, from and to the bucket, sources read from it.
    dest = f"gs://{BUCKET}/exports/ls"
    assert main(["export", f"gs://{BUCKET}/run", "--format", "labelstudio", "--dest", dest]) == 0
    tasks = json.loads(bucket.blob("exports/ls/tasks-00000.json").download_as_bytes())
    assert sorted(t["data"]["image"] for t in tasks) == [
        f"gs://{BUCKET}/src/img_{i}.png" for i in range(3)
    ]
    assert bucket.blob("exports/ls/labeling_config.xml").exists()
    dest = f"gs://{BUCKET}/exports/shards"
    args = ["export", f"gs://{BUCKET}/run", "--format", "sa1b-tar", "--dest", dest]
    assert main([*args, "--shard_images", "2"]) == 0
    index = json.loads(bucket.blob("exports/shards/index.json").download_as_bytes())
    assert index["images"] == 3 and index["skipped"] == [] and len(index["shards"]) == 2
    shard = bucket.blob("exports/shards/sa1b-000000.tar").download_as_bytes()
    assert len(shard) == index["shards"][0]["bytes"]
    with tarfile.open(fileobj=io.BytesIO(shard)) as tar:
        assert sorted(tar.getnames()) == ["sa_1.jpg", "sa_1.json", "sa_2.jpg", "sa_2.json"]

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


def parquet_mask(row: dict) -> np.ndarray:
    return decode(row["segmentation"]).astype(bool)


def test_labelstudio_export_round_trips_pixel_exact_through_label_studios_decoder(run, tmp_path):
    from label_studio_converter.brush import decode_rle

    dest = tmp_path / "ls"
    assert main(["export", str(run), "--format", "labelstudio", "--dest", str(dest)]) == 0
    config = ET.fromstring((dest / "labeling_config.xml").read_text())
    image_tag, brush = config.find("Image"), config.find("BrushLabels")
    assert brush.get("toName") == image_tag.get("name") and image_tag.get("value") == "$image"
    labels = [label.get("value") for label in brush.findall("Label")]
    tasks = json.loads((dest / "tasks-00000.json").read_text())
    assert [p.name for p in sorted(dest.glob("tasks-*.json"))] == ["tasks-00000.json"]
    parquet = masks_by_id(run)
    images = {r["image_uri"]: r for r in read_table(run, "images").to_pylist()}
    assert sorted(t["data"]["image_uri"] for t in tasks) == sorted(images)
    seen = set()
    for t in tasks:
        uri = t["data"]["image_uri"]
        assert t["data"]["image"] == "/data/local-files/?d=" + uri.lstrip("/")
        (prediction,) = t["predictions"]
        results = prediction["result"]
        assert len(results) == images[uri]["masks_kept"]
        for r in results:
            row = parquet[r["id"]]
            seen.add(r["id"])
            assert row["image_uri"] == uri
            assert (r["from_name"], r["to_name"], r["type"]) == (
                brush.get("name"),
                image_tag.get("name"),
                "brushlabels",
            )
            assert r["value"]["brushlabels"] == labels == ["object"]
            h, w = row["segmentation"]["size"]
            assert (r["original_height"], r["original_width"]) == (h, w)
            rgba = decode_rle(bytes(r["value"]["rle"])).reshape(h, w, 4)
            expected = parquet_mask(row)
            np.testing.assert_array_equal(rgba[..., 3] == 255, expected)
            assert set(np.unique(rgba)) <= {0, 255}
            clipped = min(max(row["predicted_iou"], 0.0), 1.0)  # Label Studio's range
            assert r["score"] == pytest.approx(clipped)
        scores = [r["score"] for r in results]
        assert prediction["score"] == pytest.approx(float(np.mean(scores)))
    assert seen == set(parquet)


def test_labelstudio_brush_rle_is_byte_for_byte_the_converters():
    from label_studio_converter.brush import decode_rle, mask2rle

    from exports.labelstudio import brush_rle

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:300, 0:400]
    cases = [
        rng.random((7, 9)) < 0.5,  # runs of every length field
        np.zeros((300, 400), bool),  # one run over 2**16, in chunks
        np.ones((1, 1), bool),
        (yy - 150) ** 2 + (xx - 200) ** 2 < 90**2,
    ]
    for mask in cases:
        ours = brush_rle(mask)
        assert ours == list(mask2rle(mask.astype(np.uint8) * 255))
        back = decode_rle(bytes(ours)).reshape(*mask.shape, 4)
        np.testing.assert_array_equal(back[..., 3] == 255, mask)
    with pytest.raises(ValueError, match="empty mask"):
        brush_rle(np.zeros((0, 5), bool))


def test_labelstudio_tasks_pass_label_studios_own_checker(run, tmp_path):
    python = os.environ.get("MASKMINE_LABEL_STUDIO_PYTHON")
    if not python:
        pytest.skip(
            "set MASKMINE_LABEL_STUDIO_PYTHON to a Python with label-studio-sdk (its own "
            "venv: the SDK pins numpy < 2.3 through opencv, below what Beam's venv has)"
        )
    check = Path(__file__).with_name("labelstudio_check.py")
    dest = tmp_path / "ls"
    assert main(["export", str(run), "--format", "labelstudio", "--dest", str(dest)]) == 0
    out = subprocess.run([python, str(check), str(dest)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    summary = json.loads(out.stdout)
    assert (summary["tasks"], summary["regions"]) == (3, len(masks_by_id(run)))
    # The checker can fail: a region pointing at no tag of the config, a score above 1.
    tasks = json.loads((dest / "tasks-00000.json").read_text())
    tasks[0]["predictions"][0]["result"][0]["to_name"] = "img"
    tasks[1]["predictions"][0]["score"] = 1.5
    (dest / "tasks-00000.json").write_text(json.dumps(tasks))
    out = subprocess.run([python, str(check), str(dest)], capture_output=True, text=True)
    assert out.returncode == 1
    assert len(json.loads(out.stdout)["errors"]) >= 2


def test_labelstudio_scores_stay_in_label_studios_range():
    from exports.labelstudio import task

    mask = np.zeros((4, 5), np.uint8, order="F")
    mask[1:3, 1:4] = 1
    rle = mask_utils.encode(mask)
    row = {
        "mask_id": "m",
        "segmentation": {"size": [4, 5], "counts": rle["counts"].decode()},
        "model_type": "vit_b",
        "checkpoint_sha256": "ab" * 32,
    }
    image = RunImage(1, "gs://b/x.jpg", "0" * 64, 5, 4, "r", 2, [])
    image.masks = [dict(row, predicted_iou=1.07), dict(row, mask_id="n", predicted_iou=-0.2)]
    (prediction,) = task(image)["predictions"]
    assert [r["score"] for r in prediction["result"]] == [1.0, 0.0]
    assert prediction["score"] == 0.5
    assert task(image)["data"]["image"] == "gs://b/x.jpg"


def test_labelstudio_urls_task_files_and_a_root_that_does_not_hold_the_images(
    run, tmp_path, capsys
):
    from exports.labelstudio import image_url

    assert image_url("gs://b/x y.jpg") == "gs://b/x y.jpg"
    assert image_url("https://h/x.jpg") == "https://h/x.jpg"
    assert image_url("/data/a b.png", "/data") == "/data/local-files/?d=a%20b.png"
    dest = tmp_path / "ls"
    root = str(run.parent)
    args = ["export", str(run), "--format", "labelstudio", "--dest", str(dest)]
    assert main([*args, "--tasks_per_file", "2", "--local_files_root", root]) == 0
    files = sorted(dest.glob("tasks-*.json"))
    tasks = [t for f in files for t in json.loads(f.read_text())]
    assert [len(json.loads(f.read_text())) for f in files] == [2, 1]
    assert {t["data"]["image"] for t in tasks} == {
        f"/data/local-files/?d=images/img_{i}.png" for i in range(3)
    }
    elsewhere = tmp_path / "ls2"
    out = [*args[:-1], str(elsewhere), "--local_files_root", str(tmp_path)]
    assert main(out) == 2
    assert "is not under --local_files_root" in capsys.readouterr().err
    assert not elsewhere.exists()  # refused before anything was written
    assert main([*args, "--tasks_per_file", "0"]) == 2


def test_sa1b_tar_shards_read_back_with_webdataset(run, tmp_path):
    import webdataset as wds

    from transforms.decode import decode_image_bytes

    dest = tmp_path / "shards"
    args = ["export", str(run), "--format", "sa1b-tar", "--dest", str(dest)]
    assert main([*args, "--shard_images", "2"]) == 0
    index = json.loads((dest / "index.json").read_text())
    assert [s["name"] for s in index["shards"]] == ["sa1b-000000.tar", "sa1b-000001.tar"]
    assert [len(s["keys"]) for s in index["shards"]] == [2, 1]
    assert index["images"] == 3 and index["skipped"] == []
    for shard in index["shards"]:
        assert (dest / shard["name"]).stat().st_size == shard["bytes"]
    urls = [str(dest / s["name"]) for s in index["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert sorted(s["__key__"] for s in samples) == sorted(
        k for s in index["shards"] for k in s["keys"]
    )
    parquet = masks_by_id(run)
    sa1b = tmp_path / "sa1b"
    assert main(["export", str(run), "--format", "sa1b", "--dest", str(sa1b)]) == 0
    plain = {
        r["image"]["image_uri"]: r for r in (json.loads(p.read_text()) for p in sa1b.glob("*"))
    }
    seen = set()
    for sample in samples:
        assert set(sample) >= {"__key__", "jpg", "json"}
        record = json.loads(sample["json"])
        uri = record["image"]["image_uri"]
        assert record["image"]["file_name"] == sample["__key__"] + ".jpg"
        # The same annotations (ids included) as the per-image SA-1B export.
        assert record["annotations"] == plain[uri]["annotations"]
        picture = np.asarray(Image.open(io.BytesIO(sample["jpg"])))
        source = decode_image_bytes(Path(uri).read_bytes())
        assert (
            picture.shape
            == source.shape
            == (record["image"]["height"], record["image"]["width"], 3)
        )
        assert np.abs(picture.astype(int) - source).mean() < 3  # JPEG quality 95
        for ann in record["annotations"]:
            seen.add(ann["mask_id"])
            np.testing.assert_array_equal(
                decode(ann["segmentation"]).astype(bool), parquet_mask(parquet[ann["mask_id"]])
            )
    assert seen == set(parquet)


def test_sa1b_tar_shard_size_is_respected(run, tmp_path):
    dest = tmp_path / "small"
    args = ["export", str(run), "--format", "sa1b-tar", "--dest", str(dest)]
    assert main([*args, "--shard_mb", "1000"]) == 0
    one = json.loads((dest / "index.json").read_text())
    assert len(one["shards"]) == 1
    assert one["shards"][0]["bytes"] > tarfile.RECORDSIZE  # all three need two records
    # One tar record (tarfile pads a tar to whole 10240-byte records): the 3 images cannot
    # share a shard; a shard may pass the limit only when it holds a single image.
    limit = tarfile.RECORDSIZE
    shutil.rmtree(dest)
    assert main([*args, "--shard_mb", f"{limit / 2**20}"]) == 0
    index = json.loads((dest / "index.json").read_text())
    assert len(index["shards"]) >= 2 and index["images"] == 3
    for shard in index["shards"]:
        size = (dest / shard["name"]).stat().st_size
        assert size == shard["bytes"]
        assert size <= limit or len(shard["keys"]) == 1
        with tarfile.open(dest / shard["name"]) as tar:
            names = sorted(tar.getnames())
        assert names == sorted(f"{k}.{ext}" for k in shard["keys"] for ext in ("jpg", "json"))
    assert main([*args, "--shard_images", "0"]) == 2


def run_with_sources(run: Path, folder: Path, sources: dict[str, bytes]) -> Path:
    """A copy of `run` under `folder` whose images are read from `folder`/src/<name>: the
    bytes `sources` gives for a name (same pixel size; its sha256 in the tables), else a
    copy of the original file."""
    (folder / "src").mkdir(parents=True)
    output = folder / "out"
    for table in ("images", "masks"):
        (output / table).mkdir(parents=True)
        for path in (run / table).glob("*.parquet"):
            rows = pq.read_table(path).to_pylist()
            for row in rows:
                name = Path(row["image_uri"]).name
                target = folder / "src" / name
                data = sources.get(name, Path(row["image_uri"]).read_bytes())
                target.write_bytes(data)
                row["image_uri"] = str(target)
                row["image_sha256"] = hashlib.sha256(data).hexdigest()
            pq.write_table(
                pa.Table.from_pylist(rows, pq.read_schema(path)), output / table / path.name
            )
    return output


def test_sa1b_tar_leaves_out_an_image_whose_source_changed(run, tmp_path):
    output = run_with_sources(run, tmp_path, {})
    Image.fromarray(scene(99)).save(tmp_path / "src" / "img_1.png")  # not the mined bytes
    dest = tmp_path / "shards"
    assert main(["export", str(output), "--format", "sa1b-tar", "--dest", str(dest)]) == 0
    index = json.loads((dest / "index.json").read_text())
    assert index["images"] == 2
    (skipped,) = index["skipped"]
    assert skipped["image_uri"] == str(tmp_path / "src" / "img_1.png")
    assert "changed since it was mined" in skipped["error"]


def test_sa1b_tar_keeps_an_rgb_jpeg_sources_own_bytes(run, tmp_path):
    from transforms.decode import decode_image_bytes

    def jpeg(name: str, mode: str) -> bytes:
        out = io.BytesIO()
        Image.open(run.parent / "images" / name).convert(mode).save(out, format="JPEG")
        return out.getvalue()

    sources = {"img_0.png": jpeg("img_0.png", "RGB"), "img_2.png": jpeg("img_2.png", "L")}
    output = run_with_sources(run, tmp_path, sources)
    dest = tmp_path / "shards"
    assert main(["export", str(output), "--format", "sa1b-tar", "--dest", str(dest)]) == 0
    by_name = {}
    with tarfile.open(dest / "sa1b-000000.tar") as tar:
        for member in tar.getmembers():
            if member.name.endswith(".json"):
                record = json.loads(tar.extractfile(member).read())["image"]
                picture = tar.extractfile(record["file_name"]).read()
                by_name[Path(record["image_uri"]).name] = picture
    assert by_name["img_0.png"] == sources["img_0.png"]  # an RGB JPEG: its own bytes
    # Grey: the pipeline decoded it to RGB, so the shard holds that, re-encoded.
    assert by_name["img_2.png"] != sources["img_2.png"]
    grey = np.asarray(Image.open(io.BytesIO(by_name["img_2.png"])))
    expected = decode_image_bytes(sources["img_2.png"])
    assert grey.shape == expected.shape and np.abs(grey.astype(int) - expected).mean() < 3


def test_streamed_exports_equal_the_whole_run_in_memory(run, tmp_path):
    from exports.coco import coco_dataset
    from exports.dataset import index_run, iter_images

    index = index_run(str(run))
    streamed = sorted(iter_images(str(run), index), key=lambda im: im.image_id)
    whole = load_run(str(run))
    assert streamed == whole
    dest = tmp_path / "coco.json"
    assert main(["export", str(run), "--format", "coco", "--dest", str(dest)]) == 0
    written, expected = json.loads(dest.read_text()), coco_dataset(whole)
    for key in ("images", "annotations", "categories", "licenses"):
        assert written[key] == json.loads(json.dumps(expected[key])), key


def test_an_image_split_over_files_comes_out_once_whole_and_old_files_read(run, tmp_path):
    from exports.dataset import Progress, index_run, iter_images

    output = tmp_path / "split"
    shutil.copytree(run, output)
    (path,) = (output / "masks").glob("*.parquet")
    masks = pq.read_table(path).sort_by("image_uri")
    path.unlink()
    # Two files that each hold part of the middle image; the older one of schema 2.
    half = masks.num_rows // 2
    pq.write_table(masks.slice(0, half), output / "masks" / "part-exp-00000-of-00002.parquet")
    old = masks.slice(half).drop(["parent_mask_id", "depth"])
    pq.write_table(old, output / "masks" / "part-exp-00001-of-00002.parquet")
    out = io.StringIO()
    progress = Progress("test", 3, every_s=0.0, stream=out)
    images = list(iter_images(str(output), index_run(str(output)), progress))
    assert sorted(im.uri for im in images) == sorted(set(masks.column("image_uri").to_pylist()))
    assert sum(len(im.masks) for im in images) == masks.num_rows
    late = [m for im in images for m in im.masks if m["mask_id"] in set(old["mask_id"].to_pylist())]
    assert late and all(m["parent_mask_id"] is None and m["depth"] is None for m in late)
    progress.done()
    assert out.getvalue().splitlines()[-1] == "test: 3/3 images, done"
    assert "test: 1/3 images" in out.getvalue()
