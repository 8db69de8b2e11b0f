"""Peak memory and time of `maskmine export` by run size: flat, since exports stream.

Synthesises run folders of N images (default 50 and 200) straight from the schemas: JPEG
sources of W x H, M masks per image (polygons turned into RLE, hierarchy computed by
transforms.hierarchy), the masks spread over 3 part files with images interleaved and row
groups of 1000 rows, as the pipeline's sinks write them. Each export then runs in a fresh
process, after a warm-up export of a 2-image run: the figures are the growth of its peak
RSS (VmHWM) over the warm-up's, and the peaks of the Python objects (tracemalloc) and
Arrow buffers it allocates. `load_run` (the whole run in memory, what the exports did
before streaming) is measured the same way for comparison.

    .venv/bin/python benchmarks/export_memory.py                  # 50 and 200 images
    .venv/bin/python benchmarks/export_memory.py --images 200 800 --formats coco sa1b-tar
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from schemas import tables  # noqa: E402
from transforms.hierarchy import parents  # noqa: E402

FORMATS = ("sa1b", "coco", "labelstudio", "sa1b-tar")
PART_FILES = 3

# Runs in the child: one export of a 2-image run first (imports, lazy paths and the
# allocator's first arenas, the same for any run), then the measured one: peak RSS
# (VmHWM) before and after it, and the peaks of what it allocates itself, Python objects
# (tracemalloc) and Arrow buffers (the Arrow memory pool).
_CHILD = """
import json, sys, time, tracemalloc
import pyarrow as pa
from exports.dataset import load_run
from pipeline.cli import main

def status_mb(key):
    with open("/proc/self/status") as f:
        return int(next(l for l in f if l.startswith(key + ":")).split()[1]) / 1024

def export(fmt, output, dest):
    if fmt == "load_run":
        return 0 if load_run(output) is not None else 1
    return main(["export", output, "--format", fmt, "--dest", dest])

fmt, output, dest, warm_output, warm_dest = sys.argv[1:6]
assert export(fmt, warm_output, warm_dest) == 0
before = status_mb("VmHWM")
pool = pa.default_memory_pool()
arrow_before = pool.max_memory()
tracemalloc.start()
start = time.perf_counter()
code = export(fmt, output, dest)
seconds = time.perf_counter() - start
python_peak = tracemalloc.get_traced_memory()[1] / 2**20
print(json.dumps({"code": code, "seconds": seconds, "before_mb": before,
                  "peak_mb": status_mb("VmHWM"), "python_peak_mb": python_peak,
                  "arrow_peak_mb": max(pool.max_memory() - arrow_before, 0) / 2**20}))
"""


def _source(rng: np.random.Generator, width: int, height: int) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], -1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(10, height / 3)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r**2] = rng.integers(0, 255, 3)
    out = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _masks(rng: np.random.Generator, n: int, width: int, height: int) -> list[dict]:
    records = []
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    for _ in range(n):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(4, height / 2)
        poly = np.stack([cx + r * np.cos(t), cy + 0.8 * r * np.sin(t)], 1).ravel().tolist()
        rle = mask_utils.merge(mask_utils.frPyObjects([poly], height, width))
        records.append(
            {
                "size": [height, width],
                "counts": rle["counts"].decode(),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": int(mask_utils.area(rle)),
                "point": [float(cx), float(cy)],
            }
        )
    return records


def synthesise(folder: Path, images: int, masks: int, width: int, height: int) -> int:
    """Write sources/ and out/{images,masks}/ under `folder`; return the masks written."""
    rng = np.random.default_rng(images)
    sources = folder / "sources"
    sources.mkdir(parents=True)
    created = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    image_rows, mask_parts = [], [[] for _ in range(PART_FILES)]
    for i in range(images):
        data = _source(rng, width, height)
        path = sources / f"img_{i:06d}.jpg"
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        records = [r for r in _masks(rng, masks, width, height) if r["area"] > 0]
        ids = [
            tables.mask_id(sha, r["counts"], [0, 0, width, height], [r["point"]], str(path))
            for r in records
        ]
        segmentations = [{"size": r["size"], "counts": r["counts"]} for r in records]
        parent_ids, depths = parents(segmentations, ids)
        for r, id_, parent, depth in zip(records, ids, parent_ids, depths):
            mask_parts[i % PART_FILES].append(
                {
                    "mask_id": id_,
                    "image_uri": str(path),
                    "image_sha256": sha,
                    "image_width": width,
                    "image_height": height,
                    "segmentation": {"size": r["size"], "counts": r["counts"]},
                    "bbox": r["bbox"],
                    "area": r["area"],
                    "predicted_iou": float(rng.uniform(0.5, 1.0)),
                    "stability_score": float(rng.uniform(0.8, 1.0)),
                    "point_coords": [r["point"]],
                    "crop_box": [0, 0, width, height],
                    "parent_mask_id": parent,
                    "depth": depth,
                    "model_type": "vit_h",
                    "checkpoint_sha256": "cd" * 32,
                    "generator_params": "{}",
                    "maskmine_version": "0.1.0",
                    "run_id": "bench",
                    "created_at": created,
                }
            )
        image_rows.append(
            {
                "image_uri": str(path),
                "image_sha256": sha,
                "image_width": width,
                "image_height": height,
                "masks_generated": len(records),
                "masks_kept": len(records),
                "prompts_decoded": 1024,
                "decode_seconds": 0.01,
                "inference_seconds": 1.0,
                "run_id": "bench",
                "created_at": created,
            }
        )
    out = folder / "out"
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    pq.write_table(
        tables.to_table(image_rows, tables.IMAGES_SCHEMA),
        out / "images" / "part-bench-00000-of-00001.parquet",
    )
    for k, rows in enumerate(mask_parts):
        table: pa.Table = tables.to_table(rows, tables.MASKS_SCHEMA)
        name = f"part-bench-{k:05d}-of-{PART_FILES:05d}.parquet"
        pq.write_table(table, out / "masks" / name, row_group_size=1000, compression="zstd")
    return sum(len(rows) for rows in mask_parts)


def measure(fmt: str, output: Path, dest: Path, warm: Path) -> dict:
    warm_dest = warm / f"export_{fmt}" / ("coco.json" if fmt == "coco" else "")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            fmt,
            str(output),
            str(dest),
            str(warm / "out"),
            str(warm_dest),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{fmt} failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    if figures["code"] != 0:
        raise RuntimeError(f"{fmt} exited {figures['code']}:\n{result.stderr[-3000:]}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--masks", type=int, default=60, help="masks per image")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--formats", nargs="+", default=[*FORMATS, "load_run"])
    parser.add_argument("--workdir", help="keep the synthesised runs here (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="export_memory_"))
    print(
        f"{'run':>22} {'format':>12} {'seconds':>8} {'peak RSS before':>15} {'after':>6} "
        f"{'growth':>6} {'python peak':>11} {'arrow peak':>10}   (MB)"
    )
    try:
        warm = work / "warm"
        if warm.exists():
            shutil.rmtree(warm)
        synthesise(warm, 2, args.masks, args.width, args.height)
        for n in args.images:
            folder = work / f"run_{n}"
            if folder.exists():
                shutil.rmtree(folder)
            total = synthesise(folder, n, args.masks, args.width, args.height)
            label = f"{n} images {total} masks"
            for fmt in args.formats:
                dest = folder / f"export_{fmt}" / ("coco.json" if fmt == "coco" else "")
                f = measure(fmt, folder / "out", dest, warm)
                print(
                    f"{label:>22} {fmt:>12} {f['seconds']:8.1f} {f['before_mb']:15.0f} "
                    f"{f['peak_mb']:6.0f} {f['peak_mb'] - f['before_mb']:6.0f} "
                    f"{f['python_peak_mb']:11.1f} {f['arrow_peak_mb']:10.1f}",
                    flush=True,
                )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
