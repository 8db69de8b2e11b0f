"""Pipeline overhead and memory: maskmine on DirectRunner vs a bare Python loop.

Both get the same generated images, model and generator parameters; each case
runs in its own child process (wall time from start to last output, model
loading included in both; peak RSS of that process alone):

  bare loop:  decode files (the pipeline's decoder), batches of 4 -> generator.generate_batch
  pipeline:   maskmine --runner DirectRunner ... (read, decode, RunInference,
              filters, three Parquet sinks)

  python benchmarks/pipeline_throughput.py [--images 20,200] [--repeats 3] [--checkpoint PATH]

The two cases alternate `--repeats` times per image count (bare, pipeline, bare, ...):
on a shared VM the hypervisor steals CPU for minutes at a time, so one pair can
differ by 20% either way. Prints images/s from the median wall time of each case,
the overhead from the medians and pair by pair, the same from process CPU time
(which stolen time does not count), the time each case spends outside the
generator's generate_batch (the pipeline's own work, measured apart from the noisy
model time), peak RSS per image count, and malloc's bytes in use.

Every image count cycles through the same `--distinct` images (20 by default, under
new file names, so each is its own URI): peak memory depends on the heaviest image
seen (the most masks), and 180 new random images would bring heavier ones. With the
same content at every count, a higher peak at 200 than at 20 comes from per-image
growth or from the allocator. Peaks are VmHWM, in MB, the highest of the repeats, with
the lowest in brackets (a run's peak varies by a few MB).

Peak RSS also counts memory freed but kept by the allocator, so the script prints what
is in use as well: glibc malloc's bytes allocated (mallinfo2: heap chunks in use plus
mmapped ones) after every generate_batch call, the highest over the first 20 images and
over all of them. A leak, or rows piling up, shows there. Python's small objects live in
pymalloc arenas outside malloc; tracemalloc (too slow to leave on) measured them:
+2.4 KB between batch 10 and batch 50 of the pipeline.

Measured here (2026-11-22), with glibc: the bytes in use stay flat from the first batch
to the 50th (bare loop 169.4 MB; pipeline 180.0 -> 180.2 MB, the Parquet sinks'
row buffers, which WriteToParquet flushes at 1000 rows). The peak still grows by 12-17
MB from 20 to 200 images, levelling off by ~40: freed memory in glibc's free lists
(fragmentation). Under other allocators (children inherit the environment, e.g.
LD_PRELOAD=/lib/x86_64-linux-gnu/libjemalloc.so.2; no in-use figures then),
growth of the peak from 20 to 200 images: jemalloc +2 bare / +3..5 MB pipeline;
tcmalloc +9 / +7 MB; jemalloc returning freed pages at once
(MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0) 478 -> 478 MB bare and 514.0 -> 514.6 MB
pipeline (the sinks' row buffer again), at half the speed. With larger images
(--size 768,1024, --images 20,80, 1 repeat) the peak did not grow (bare loop 671 -> 670,
pipeline 838 -> 827 MB), but the bare loop alone on the same 20 images peaked anywhere
from 669 to 750 MB over four runs, glibc keeping 200-290 MB of freed memory, while the
bytes in use stayed at 196.4-196.9 MB in every run: compare peaks over several repeats.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = ROOT / "tests" / "fixtures" / "sam_tiny.pth"
BATCH = 4  # images per encoder batch in both
FIRST_IMAGES = 20  # in-use memory over the first images vs over all of them
GENERATOR = {"points_per_side": 12, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}


def write_images(folder: Path, count: int, size: tuple[int, int], distinct: int) -> None:
    """`count` PNGs cycling through `distinct` seeded images of random discs."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    images = []
    for _ in range(min(count, distinct)):
        img = np.zeros((h, w, 3), np.uint8) + rng.integers(0, 80, 3, dtype=np.uint8)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.3) * h
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.integers(80, 255, 3)
        images.append(Image.fromarray(img))
    for i in range(count):
        images[i % len(images)].save(folder / f"img_{i:05d}.png")


def bare_loop(spec: dict) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from sam_core import build_sam
    from sam_core.generator import AutomaticMaskGenerator
    from transforms.decode import decode_image_bytes

    torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    generator = AutomaticMaskGenerator(
        build_sam(checkpoint=spec["checkpoint"]),
        output_mode="coco_rle",
        encoder_batch_size=BATCH,
        **GENERATOR,
    )
    paths, masks = sorted(Path(spec["folder"]).glob("*.png")), 0
    for start in range(0, len(paths), BATCH):
        pixels = [decode_image_bytes(p.read_bytes()) for p in paths[start : start + BATCH]]
        masks += sum(len(records) for records in generator.generate_batch(pixels))
    return {"seconds": time.perf_counter() - t0, "masks": masks}


def pipeline_run(spec: dict) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from pipeline.cli import main

    torch.set_num_threads(spec["threads"])
    args = [
        "--runner=DirectRunner",
        f"--input={spec['folder']}",
        f"--output={spec['output']}",
        f"--checkpoint={spec['checkpoint']}",
        "--dedup_iou_thresh=1.0",  # the bare loop has no extra dedup either
        f"--inference_batch_size={BATCH}",
        *[f"--{k}={v}" for k, v in GENERATOR.items()],
    ]
    t0 = time.perf_counter()
    assert main(args) == 0
    seconds = time.perf_counter() - t0
    import pyarrow.parquet as pq

    masks = sum(pq.read_metadata(p).num_rows for p in Path(spec["output"]).glob("masks/*.parquet"))
    return {"seconds": seconds, "masks": masks}


def _malloc_in_use() -> Callable[[], int] | None:
    """Bytes glibc malloc has handed out and not had back; None without glibc 2.33+."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fields = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in fields.split()]

    mallinfo2.restype = MallInfo2

    def in_use() -> int:
        info = mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


def _watch_generator() -> tuple[list[float], list[int]]:
    """Accumulate the wall time spent inside generate_batch (both cases call it) and
    sample malloc's bytes in use after each call."""
    sys.path.insert(0, str(ROOT))
    from sam_core.generator import AutomaticMaskGenerator

    spent, in_use, generate_batch = [0.0], [], AutomaticMaskGenerator.generate_batch
    measure = _malloc_in_use()

    def watched(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return generate_batch(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0
            if measure is not None:
                in_use.append(measure())

    AutomaticMaskGenerator.generate_batch = watched
    return spent, in_use


def child(spec: dict) -> None:
    spent, in_use = _watch_generator()
    c0 = time.process_time()
    result = (bare_loop if spec["case"] == "bare" else pipeline_run)(spec)
    result["cpu_seconds"] = time.process_time() - c0
    result["generator_seconds"] = spent[0]
    first = -(-FIRST_IMAGES // BATCH)  # batches holding the first 20 images
    result["in_use_mb"] = [max(s[:first]) / 2**20, max(s) / 2**20] if (s := in_use) else None
    from benchmarks.peak_memory import peak_rss_gb

    result["peak_gb"] = peak_rss_gb()
    print("RESULT " + json.dumps(result))


def run_child(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        check=True,
        capture_output=True,
        text=True,
        cwd=str(ROOT),
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def _peak_mb(runs: list[dict]) -> str:
    peaks = [x["peak_gb"] * 1024 for x in runs]
    return f"{max(peaks):.0f} MB [{min(peaks):.0f}]"


def _in_use_mb(runs: list[dict]) -> str:
    """Highest malloc bytes in use after a batch: first 20 images -> all, over the runs."""
    if any(x["in_use_mb"] is None for x in runs):
        return "n/a (no glibc mallinfo2)"
    first = max(x["in_use_mb"][0] for x in runs)
    every = max(x["in_use_mb"][1] for x in runs)
    if every < 1:  # glibc's own counters, with another malloc preloaded
        return "n/a (malloc is not glibc's)"
    return f"{first:.1f} -> {every:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--images", default="20,200")
    parser.add_argument("--size", default="96,128", help="image height,width")
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case per count")
    parser.add_argument("--distinct", type=int, default=20, help="different images cycled")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    size = tuple(int(v) for v in args.size.split(","))
    print(
        f"generator {GENERATOR}, images {size} ({args.distinct} distinct, cycled), "
        f"checkpoint {args.checkpoint}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for count in (int(c) for c in args.images.split(",")):
            folder = Path(tmp) / f"images_{count}"
            write_images(folder, count, size, args.distinct)
            spec = {"folder": str(folder), "checkpoint": args.checkpoint, "threads": args.threads}
            bare, pipe = [], []
            for r in range(args.repeats):
                bare.append(run_child(dict(spec, case="bare")))
                out = str(Path(tmp) / f"out_{count}_{r}")
                pipe.append(run_child(dict(spec, case="pipeline", output=out)))
            b_s = float(np.median([x["seconds"] for x in bare]))
            p_s = float(np.median([x["seconds"] for x in pipe]))
            b_cpu = float(np.median([x["cpu_seconds"] for x in bare]))
            p_cpu = float(np.median([x["cpu_seconds"] for x in pipe]))
            pairs = " ".join(f"{p['seconds'] / b['seconds'] - 1:+.1%}" for b, p in zip(bare, pipe))
            # Time outside generate_batch: reading, decoding, batching, filters, sinks,
            # model loading; the generator's own time swings with the machine's noise.
            b_out = float(np.median([x["seconds"] - x["generator_seconds"] for x in bare]))
            p_out = float(np.median([x["seconds"] - x["generator_seconds"] for x in pipe]))
            print(
                f"{count:4d} images | bare loop {count / b_s:6.2f} img/s "
                f"(peak {_peak_mb(bare)}, {bare[0]['masks']} masks) | "
                f"pipeline {count / p_s:6.2f} img/s (peak {_peak_mb(pipe)}, "
                f"{pipe[0]['masks']} masks) | overhead {p_s / b_s - 1:+.1%} (pairs {pairs}), "
                f"cpu time {p_cpu / b_cpu - 1:+.1%}"
            )
            print(
                f"{'':4s}        | outside the generator: bare loop {b_out:.1f} s, pipeline "
                f"{p_out:.1f} s: the pipeline's own cost is {(p_out - b_out) / b_s:+.1%} of the "
                f"bare loop's time (generator {b_s - b_out:.1f} s vs {p_s - p_out:.1f} s)"
            )
            print(
                f"{'':4s}        | malloc in use after a batch, first {FIRST_IMAGES} images -> "
                f"all: bare loop {_in_use_mb(bare)}, pipeline {_in_use_mb(pipe)}"
            )


if __name__ == "__main__":
    main()
