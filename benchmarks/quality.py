"""Mask quality of the whole pipeline on held-out synthetic scenes with exact ground truth.

Writes scenes from `sam_core.scenes` with seeds EVAL_SEED_START, +1, ... (never used in
training) as PNGs to a temp folder, mines them with the maskmine pipeline on DirectRunner,
reads the masks table back and matches it against the ground-truth objects:

- recall@t: fraction of ground-truth objects whose best-matching mined mask has IoU >= t
  (t = 0.5, 0.75); a part and its whole are separate objects;
- mean best IoU over objects; masks per image;
- the same by object area (px), to show which objects are missed.

  python benchmarks/quality.py [--scenes 20] [--checkpoint PATH | --random_weights]
                               [--size 256] [any maskmine flag, e.g. --pred_iou_thresh 0.2]

Generator and filter flags are the pipeline's own, with its defaults. Prints one line per
scene and the overall figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import apache_beam as beam  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from exports.tables import read_table  # noqa: E402
from pipeline.graph import BUNDLED_CHECKPOINT, build_pipeline, resolve_defaults  # noqa: E402
from pipeline.options import MaskMineOptions  # noqa: E402
from sam_core.evaluate import best_ious, match_summary  # noqa: E402
from sam_core.scenes import EVAL_SEED_START, generate_scene  # noqa: E402


@dataclasses.dataclass(frozen=True)
class SceneScore:
    """Matching of one scene's mined masks against its ground truth."""

    name: str
    seed: int
    best_ious: np.ndarray  # (K,) best IoU of each ground-truth object over the mined masks
    masks: int  # masks mined for the image
    areas: np.ndarray  # (K,) area of each ground-truth object, px


# Upper edges (px) of the object-area buckets of the report; the last bucket is open.
AREA_EDGES = (300, 1000, 3000)


def write_scenes(
    folder: Path, count: int, size: tuple[int, int] = (256, 256), seed_start: int = EVAL_SEED_START
) -> dict[str, tuple[int, np.ndarray]]:
    """PNG scenes under `folder`; file name -> (seed, (K, H, W) bool ground-truth masks)."""
    if seed_start < EVAL_SEED_START:
        raise ValueError(f"seed_start {seed_start} is a training seed (< {EVAL_SEED_START})")
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(count):
        seed = seed_start + i
        scene = generate_scene(seed, size)
        name = f"scene_{seed}.png"
        Image.fromarray(scene.image).save(folder / name)
        truth[name] = (seed, scene.masks)
    return truth


def random_checkpoint(path: Path, seed: int = 0) -> Path:
    """A state dict of SYNTHETIC_CONFIG with seeded random weights (the no-skill baseline)."""
    from sam_core import build_sam
    from sam_core.train import SYNTHETIC_CONFIG

    torch.manual_seed(seed)
    torch.save(build_sam(SYNTHETIC_CONFIG).state_dict(), path)
    return path


def mine(images: Path, output: Path, checkpoint: str, flags: Sequence[str] = ()) -> None:
    """Run the maskmine pipeline (DirectRunner) on the folder `images` into `output`."""
    options = MaskMineOptions(
        [
            "--runner=DirectRunner",
            f"--input={images}",
            f"--output={output}",
            f"--checkpoint={checkpoint}",
            *flags,
        ]
    )
    resolve_defaults(options)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    pipeline.run().wait_until_finish()


def mined_rles(output: Path, names: Sequence[str]) -> dict[str, list[dict]]:
    """File name -> COCO RLEs of that image's masks in the masks table under `output`."""
    found: dict[str, list[dict]] = {name: [] for name in names}
    for row in read_table(str(output), "masks", ["image_uri", "segmentation"]).to_pylist():
        found[Path(row["image_uri"]).name].append(row["segmentation"])
    return found


def decode(rles: Sequence[dict], size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool masks of N COCO RLEs."""
    if not rles:
        return np.zeros((0, *size), bool)
    return np.stack([mask_utils.decode(r) > 0 for r in rles])


def score(
    pred: dict[str, list[dict]], truth: dict[str, tuple[int, np.ndarray]], control: bool = False
) -> list[SceneScore]:
    """Match each scene's mined masks (`pred`, file name -> RLEs) with its ground truth.

    control=True matches them with the *next* scene's ground truth instead: masks that
    follow the image score clearly lower there; masks that ignore it score the same.
    Masks are decoded one scene at a time (thousands of masks per scene at low thresholds).
    """
    names = list(truth)
    scores = []
    for i, name in enumerate(names):
        seed, gt = truth[names[(i + 1) % len(names)] if control else name]
        masks = decode(pred[name], gt.shape[1:])
        areas = gt.reshape(len(gt), -1).sum(axis=1)
        scores.append(SceneScore(name, seed, best_ious(gt, masks), len(masks), areas))
    return scores


def summary(scores: Sequence[SceneScore]) -> dict[str, float]:
    """Overall recall@0.5/0.75, mean best IoU, object count and masks per image."""
    return {
        **match_summary([s.best_ious for s in scores]),
        "masks_per_image": float(np.mean([s.masks for s in scores])) if scores else 0.0,
    }


def by_area(
    scores: Sequence[SceneScore], edges: Sequence[int] = AREA_EDGES
) -> list[tuple[str, dict[str, float]]]:
    """(label, match_summary) per object-area bucket [0, e1), [e1, e2), ..., [e_last, inf);
    every object falls in exactly one bucket, empty buckets included."""
    ious = np.concatenate([np.zeros(0), *(s.best_ious for s in scores)])
    areas = np.concatenate([np.zeros(0), *(s.areas for s in scores)])
    bounds = [0, *edges, np.inf]
    out = []
    for lo, hi in itertools.pairwise(bounds):
        inside = (areas >= lo) & (areas < hi)
        label = f"{lo:.0f}-{hi:.0f} px" if np.isfinite(hi) else f">= {lo:.0f} px"
        out.append((label, match_summary([ious[inside]])))
    return out


def run_quality(
    count: int,
    checkpoint: str,
    flags: Sequence[str] = (),
    size: tuple[int, int] = (256, 256),
    workdir: Path | None = None,
) -> tuple[list[SceneScore], list[SceneScore]]:
    """Write `count` held-out scenes, mine them with `checkpoint`, score them; returns the
    scores and the control scores (see `score`)."""
    with tempfile.TemporaryDirectory(prefix="maskmine-quality-") as tmp:
        root = Path(workdir or tmp)
        truth = write_scenes(root / "scenes", count, size)
        mine(root / "scenes", root / "out", checkpoint, flags)
        pred = mined_rles(root / "out", list(truth))
    return score(pred, truth), score(pred, truth, control=True)


def format_report(scores: Sequence[SceneScore], control: Sequence[SceneScore]) -> str:
    lines = [f"{'scene':<22} {'objects':>7} {'masks':>6} {'R@0.5':>6} {'R@0.75':>6} {'mIoU':>6}"]
    for s in scores:
        m = match_summary([s.best_ious])
        lines.append(
            f"{s.name:<22} {len(s.best_ious):>7} {s.masks:>6} {m['recall@0.5']:>6.3f} "
            f"{m['recall@0.75']:>6.3f} {m['mean_best_iou']:>6.3f}"
        )
    for label, figures in (("overall", summary(scores)), ("control", summary(control))):
        lines.append(
            f"{label}: {len(scores)} scenes, {figures['gt_objects']} objects, "
            f"recall@0.5 {figures['recall@0.5']:.3f}, recall@0.75 {figures['recall@0.75']:.3f}, "
            f"mean best IoU {figures['mean_best_iou']:.3f}, "
            f"masks per image {figures['masks_per_image']:.1f}"
        )
    lines.append(
        "(control: each scene's masks against the next scene's objects; close to overall "
        "means the masks do not follow the image)"
    )
    for label, m in by_area(scores):
        lines.append(
            f"objects of {label:<14} {m['gt_objects']:>4}: recall@0.5 {m['recall@0.5']:.3f}, "
            f"recall@0.75 {m['recall@0.75']:.3f}, mean best IoU {m['mean_best_iou']:.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other flags go to the pipeline (maskmine --help lists them).",
    )
    parser.add_argument("--scenes", type=int, default=20, help="held-out scenes to mine")
    parser.add_argument("--size", type=int, default=256, help="scene side in pixels")
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", default=str(BUNDLED_CHECKPOINT))
    model.add_argument(
        "--random_weights",
        action="store_true",
        help="seeded random weights of the bundled model's config (a no-skill baseline)",
    )
    parser.add_argument("--workdir", type=Path, help="keep scenes and outputs here")
    args, flags = parser.parse_known_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="maskmine-random-") as tmp:
        checkpoint = (
            str(random_checkpoint(Path(tmp) / "random.pth"))
            if args.random_weights
            else args.checkpoint
        )
        print(
            f"quality: {args.scenes} held-out scenes (seeds {EVAL_SEED_START}..), "
            f"{args.size}px, checkpoint {'random weights' if args.random_weights else checkpoint}"
            f"{', flags ' + ' '.join(flags) if flags else ''}",
            flush=True,
        )
        scores, control = run_quality(
            args.scenes, checkpoint, flags, (args.size, args.size), args.workdir
        )
    print(format_report(scores, control))
    print(f"took {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
