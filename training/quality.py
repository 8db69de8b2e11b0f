"""Score mined masks against the exact ground truth of held-out synthetic scenes.

- recall@t: fraction of ground-truth objects whose best-matching mined mask has IoU >= t
  (t = 0.5, 0.75); a part and its whole are separate objects;
- mean best IoU over objects; masks per image;
- the same by object area (px), to show which objects are missed;
- a control: each scene's masks against the next scene's objects.

Pure numpy/pycocotools: `benchmarks/quality.py` and `tests/test_quality.py` mine the scenes
with the pipeline and score them here.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from .evaluate import best_ious, match_summary
from .scenes import EVAL_SEED_START, generate_scene


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

    from .train import SYNTHETIC_CONFIG

    torch.manual_seed(seed)
    torch.save(build_sam(SYNTHETIC_CONFIG).state_dict(), path)
    return path


def rles_by_image(rows: Iterable[dict], names: Sequence[str]) -> dict[str, list[dict]]:
    """File name -> COCO RLEs of that image's masks, from masks-table rows (dicts with
    image_uri and segmentation)."""
    found: dict[str, list[dict]] = {name: [] for name in names}
    for row in rows:
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
