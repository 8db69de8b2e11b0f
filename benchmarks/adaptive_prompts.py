"""Adaptive prompts vs the exact grid: decoder prompts, wall time, masks recovered.

For each image (held-out synthetic scenes, seeds never used in training, and the bundled
sample photos) the exact mode and the adaptive mode run one after the other (A B per
image, so drift hits both alike), on the bundled model unless --checkpoint is given, in
fp32. Printed per threshold set:
- prompts: point prompts decoded, summed over the images, exact / adaptive;
- time: wall seconds summed, exact / adaptive (and the median of per-image ratios);
- recovered: the share of the exact mode's final masks that the adaptive mode also
  returns, matched one to one at mask IoU >= 0.9 (scripts/amg_match.py);
for all images, then for the scenes and the photos apart.

  python benchmarks/adaptive_prompts.py [--scenes 20] [--size 256] [--no-photos]
      [--adaptive_stride 4] [--adaptive_radius 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import BUNDLED_CHECKPOINT, SAMPLES_DIR  # noqa: E402
from sam_core import AutomaticMaskGenerator, build_sam  # noqa: E402
from sam_core.allocator import keep_freed_memory  # noqa: E402
from scripts.amg_match import match_records  # noqa: E402
from training.scenes import EVAL_SEED_START, generate_scene  # noqa: E402

# The thresholds `make demo` uses with the bundled model, and everything kept.
THRESHOLDS = {
    "demo (0.5 / 0.7)": dict(pred_iou_thresh=0.5, stability_score_thresh=0.7),
    "thresholds 0": dict(pred_iou_thresh=0.0, stability_score_thresh=0.0),
}


def images(scenes: int, size: int, photos: bool) -> list[tuple[str, np.ndarray]]:
    out = [
        (f"scene_{EVAL_SEED_START + i}", generate_scene(EVAL_SEED_START + i, (size, size)).image)
        for i in range(scenes)
    ]
    if photos:
        for path in sorted(SAMPLES_DIR.glob("*.jpg")):
            out.append((path.name, np.asarray(Image.open(path).convert("RGB"))))
    return out


def timed(generator: AutomaticMaskGenerator, image: np.ndarray) -> tuple[list[dict], float, int]:
    start = time.perf_counter()
    records = generator.generate(image)
    return records, time.perf_counter() - start, generator.prompts_decoded[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--size", type=int, default=256, help="scene side, px")
    parser.add_argument("--no-photos", action="store_true", help="scenes only")
    parser.add_argument("--checkpoint", default=str(BUNDLED_CHECKPOINT))
    parser.add_argument("--points_per_side", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adaptive_stride", type=int, default=4)
    parser.add_argument("--adaptive_radius", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as a pipeline worker does
    print(
        f"cpu capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
        f"{args.threads} threads, fp32, {args.points_per_side}x{args.points_per_side} grid, "
        f"adaptive stride {args.adaptive_stride}, radius {args.adaptive_radius}"
    )
    model = build_sam(checkpoint=args.checkpoint)
    data = images(args.scenes, args.size, not args.no_photos)
    photos = len(data) - args.scenes
    print(f"{len(data)} images: {args.scenes} held-out scenes of {args.size} px, {photos} photos")
    for label, thresholds in THRESHOLDS.items():
        common = dict(points_per_side=args.points_per_side, output_mode="coco_rle", **thresholds)
        exact = AutomaticMaskGenerator(model, **common)
        adaptive = AutomaticMaskGenerator(
            model,
            prompt_mode="adaptive",
            adaptive_stride=args.adaptive_stride,
            adaptive_radius=args.adaptive_radius,
            **common,
        )
        exact.generate(data[0][1][:64, :64])  # warm-up
        adaptive.generate(data[0][1][:64, :64])
        # Per group of images: prompts, seconds and masks of each mode, masks matched.
        groups: dict[str, dict[str, float]] = {}
        ratios = []
        for name, image in data:
            e_records, e_seconds, e_prompts = timed(exact, image)
            a_records, a_seconds, a_prompts = timed(adaptive, image)
            ratios.append(e_seconds / max(a_seconds, 1e-9))
            match = match_records(a_records, e_records, min_iou=0.9, score_tol=1.0)
            group = groups.setdefault("scenes" if name.startswith("scene_") else "photos", {})
            for key, value in {
                "exact prompts": e_prompts,
                "adaptive prompts": a_prompts,
                "exact s": e_seconds,
                "adaptive s": a_seconds,
                "exact masks": len(e_records),
                "adaptive masks": len(a_records),
                "matched": match.n_matched,
            }.items():
                group[key] = group.get(key, 0) + value
        print(f"== {label} ==")
        total = {key: sum(g[key] for g in groups.values()) for key in next(iter(groups.values()))}
        for name, figures in [("all", total), *groups.items()]:
            print(f"  {name}:")
            print_figures(figures)
        print(f"  median time ratio per image {statistics.median(ratios):.2f}x")


def print_figures(f: dict[str, float]) -> None:
    ep, ap, es, as_ = f["exact prompts"], f["adaptive prompts"], f["exact s"], f["adaptive s"]
    print(f"    prompts   exact {ep}, adaptive {ap}: {ep / max(ap, 1):.2f}x fewer")
    print(f"    time      exact {es:.1f} s, adaptive {as_:.1f} s: {es / max(as_, 1e-9):.2f}x")
    print(f"    masks     exact {f['exact masks']}, adaptive {f['adaptive masks']}")
    share = f["matched"] / f["exact masks"] if f["exact masks"] else float("nan")
    print(
        f"    recovered {f['matched']}/{f['exact masks']} of the exact masks at IoU >= 0.9: "
        f"{share:.1%}"
    )


if __name__ == "__main__":
    main()
