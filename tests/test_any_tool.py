"""The tables read with tools that are not ours: DuckDB SQL and Hugging Face `datasets`,
running the README's "Querying the tables" blocks exactly as written.

One pipeline run (tiny fixture model, two generated images and a broken file) into
`out/`, plus a part file of masks built by transforms.rows from a scene of nested shapes
(so the hierarchy queries have parents and leaves to find) and one of schema 2 (no
parent_mask_id/depth columns), as a folder written by an older maskmine would hold.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.cli import main
from schemas import tables
from transforms.records import MinedImage, Provenance
from transforms.rows import mask_rows

from .conftest import FIXTURES
from .helpers import FAST, scene

ROOT = Path(__file__).resolve().parent.parent
SECTION = "## Querying the tables"


def readme_blocks(language: str) -> list[str]:
    """The fenced `language` blocks of the README's query section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(rf"```{language}\n(.*?)```", text[start:end], flags=re.S)


def nested_rows() -> list[dict]:
    """Masks rows of a square holding a disc holding a ring, through the pipeline's code."""
    h, w = 60, 80
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(yy - 30, xx - 40)
    shapes = [
        (yy >= 5) & (yy < 55) & (xx >= 10) & (xx < 70),
        r < 22,
        (r >= 8) & (r < 18),
        (yy < 4) & (xx < 4),  # alone in a corner
    ]
    records = []
    for k, shape in enumerate(shapes):
        rle = mask_utils.encode(np.asfortranarray(shape.astype(np.uint8)))
        records.append(
            {
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": int(shape.sum()),
                "predicted_iou": 0.5 + 0.1 * k,
                "stability_score": 0.9,
                "point_coords": [[float(k), 0.0]],
                "crop_box": [0, 0, w, h],
            }
        )
    image = MinedImage("nested.png", "ab" * 32, w, h, records, 4, 0.0, 0.0, "custom", "cd" * 32)
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    return mask_rows(image, Provenance("nested", "{}", "0.1.0", created))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("anytool")
    images = root / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(scene(30 + i)).save(images / f"img_{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    args = [
        "--runner=DirectRunner",
        f"--input={images}",
        f"--output={root / 'out'}",
        f"--checkpoint={FIXTURES / 'sam_tiny.pth'}",
        "--run_id=tools",
        *FAST,
    ]
    assert main(args) == 0
    masks = root / "out" / "masks"
    nested = tables.to_table(nested_rows(), tables.MASKS_SCHEMA)
    pq.write_table(nested, masks / "part-nested-00000-of-00001.parquet")
    old = nested.slice(3).drop(["parent_mask_id", "depth"])  # the corner mask, schema 2
    old = old.set_column(0, "mask_id", pa.array(["0" * 32]))
    old = old.set_column(
        old.schema.get_field_index("image_uri"), "image_uri", pa.array(["old.png"])
    )
    pq.write_table(old, masks / "part-old-00000-of-00001.parquet")
    return root


def all_masks(workdir: Path) -> list[dict]:
    from exports.tables import read_table

    return read_table(str(workdir / "out"), "masks").to_pylist()


def run_sql(workdir: Path, sql: str, monkeypatch) -> list[tuple]:
    import duckdb

    monkeypatch.chdir(workdir)  # the README's paths are relative: out/...
    with duckdb.connect() as con:
        return con.execute(sql).fetchall()


def test_the_readme_shows_the_queries_this_test_runs():
    titles = [block.splitlines()[0] for block in readme_blocks("sql")]
    assert titles == [
        "-- masks per image, and their mean predicted IoU",
        "-- top-level masks only: inside no other mask of their image",
        "-- leaves only: no other mask of their image inside them",
        "-- images and masks per run",
        "-- inputs that failed, by stage",
    ]
    assert len(readme_blocks("python")) == 1


def test_duckdb_masks_per_image_and_mean_predicted_iou(workdir, monkeypatch):
    got = run_sql(workdir, readme_blocks("sql")[0], monkeypatch)
    rows = all_masks(workdir)
    expected = {}
    for m in rows:
        expected.setdefault(m["image_uri"], []).append(m["predicted_iou"])
    assert [u for u, _, _ in got] == sorted(expected)
    assert len(expected) == 4  # two mined images, the nested scene, the old file's image
    for uri, count, mean in got:
        assert count == len(expected[uri])
        assert mean == pytest.approx(float(np.mean(expected[uri])), rel=1e-6)


def test_duckdb_top_level_and_leaves(workdir, monkeypatch):
    sql = readme_blocks("sql")
    rows = all_masks(workdir)
    top = run_sql(workdir, sql[1], monkeypatch)
    leaves = run_sql(workdir, sql[2], monkeypatch)
    parents = {m["parent_mask_id"] for m in rows if m["parent_mask_id"] is not None}
    assert [(u, i) for u, i, _ in top] == sorted(
        (m["image_uri"], m["mask_id"]) for m in rows if m["depth"] == 0
    )
    assert [(u, i) for u, i, _ in leaves] == sorted(
        (m["image_uri"], m["mask_id"])
        for m in rows
        if m["depth"] is not None and m["mask_id"] not in parents
    )
    # The nested scene: square and corner at the top, the ring the deepest leaf.
    square, disc, ring, corner = nested_rows()
    top_ids = {i for _, i, _ in top}
    assert {square["mask_id"], corner["mask_id"]} <= top_ids
    assert disc["mask_id"] not in top_ids and ring["mask_id"] not in top_ids
    nested_leaves = {(i, d) for u, i, d in leaves if u == "nested.png"}
    assert nested_leaves == {(ring["mask_id"], 2), (corner["mask_id"], 0)}
    # The schema-2 file's mask has no hierarchy: neither top nor leaf.
    assert "0" * 32 not in top_ids | {i for _, i, _ in leaves}


def test_duckdb_images_per_run_and_errors_by_stage(workdir, monkeypatch):
    sql = readme_blocks("sql")
    assert run_sql(workdir, sql[3], monkeypatch) == [
        ("tools", 2, sum(1 for m in all_masks(workdir) if m["run_id"] == "tools"))
    ]
    assert run_sql(workdir, sql[4], monkeypatch) == [("decode", 1)]


def test_huggingface_datasets_reads_the_three_tables(workdir):
    (block,) = readme_blocks("python")
    # A fresh process: HF_* must be set before `datasets` is imported; no network.
    runner = (
        "import json, sys\n"
        "namespace = {}\n"
        "exec(sys.stdin.read(), namespace)\n"
        "tables, top = namespace['tables'], namespace['top']\n"
        "print(json.dumps({'rows': {n: t.num_rows for n, t in tables.items()},"
        " 'top': len(top), 'columns': tables['masks'].column_names,"
        " 'first': {k: str(v) for k, v in tables['masks'][0].items()}}))\n"
    )
    env = dict(
        os.environ,
        HF_HOME=str(workdir / "hf"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    out = subprocess.run(
        [sys.executable, "-c", runner],
        input=block,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = all_masks(workdir)
    assert result["rows"] == {"images": 2, "masks": len(rows), "errors": 1}
    assert result["top"] == sum(1 for m in rows if m["depth"] == 0)
    assert result["columns"] == tables.MASKS_SCHEMA.names
