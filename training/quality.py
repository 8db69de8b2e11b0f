"""Score mined masks against the exact ground truth of held-out synthetic scenes.

- recall@t: fraction of ground-truth objects whose best-matching mined mask has IoU >= t
  (t = 0.5, 0.75); a part and its whole are separate objects;
- mean best IoU over objects; masks per image;
- the same by object area (px), to show which objects are missed;
- a control: each scene's masks against the next scene's objects;
- calibration: for each mined mask, its predicted IoU against its actual IoU with the
  best-matching object (mean absolute error, binned reliability, the share of masks
  that match an object at IoU >= 0.75).

Pure numpy/pycocotools: `benchmarks/quality.py` and `tests/test_quality.py` mine the scenes
with the pipeline and score them here.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from .evaluate import iou_matrix, match_summary
from .scenes import EVAL_SEED_START, Scene, generate_scene
from .shifted_scenes import generate_shifted_scene


@dataclasses.dataclass(frozen=True)
class SceneScore:
    """Matching of one scene's mined masks against its ground truth."""

    name: str
    seed: int
    best_ious: np.ndarray  # (K,) best IoU of each ground-truth object over the mined masks
    masks: int  # masks mined for the image
    areas: np.ndarray  # (K,) area of each ground-truth object, px
    # (N,) per mined mask: its predicted IoU, and its IoU with the best-matching object
    predicted: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    actual: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    # (N,) per mined mask: its stability score (empty unless given to `score`)
    stability: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    # (K, N) IoU of each ground-truth object with each mined mask
    ious: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0)))


# Scene generators by name: the trainer's own ("scenes", held-out seeds) and one it never
# saw ("shifted": other shapes, fills, sizes and lighting).
GENERATORS: dict[str, Callable[[int, tuple[int, int]], Scene]] = {
    "scenes": generate_scene,
    "shifted": generate_shifted_scene,
}

# Upper edges (px) of the object-area buckets of the report; the last bucket is open.
AREA_EDGES = (300, 1000, 3000)


def write_scenes(
    folder: Path,
    count: int,
    size: tuple[int, int] = (256, 256),
    seed_start: int = EVAL_SEED_START,
    generator: str = "scenes",
) -> dict[str, tuple[int, np.ndarray]]:
    """PNG scenes of `generator` (a GENERATORS name) under `folder`; file name -> (seed,
    (K, H, W) bool ground-truth masks)."""
    if seed_start < EVAL_SEED_START:
        raise ValueError(f"seed_start {seed_start} is a training seed (< {EVAL_SEED_START})")
    if generator not in GENERATORS:
        raise ValueError(f"unknown scene generator {generator!r}; known: {sorted(GENERATORS)}")
    generate = GENERATORS[generator]
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in range(count):
        seed = seed_start + i
        scene = generate(seed, size)
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


def values_by_image(
    rows: Iterable[dict], names: Sequence[str], column: str = "predicted_iou"
) -> dict[str, list[float]]:
    """File name -> `column` (predicted_iou, stability_score) of its masks, in the order
    of rles_by_image."""
    found: dict[str, list[float]] = {name: [] for name in names}
    for row in rows:
        found[Path(row["image_uri"]).name].append(float(row[column]))
    return found


def decode(rles: Sequence[dict], size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) bool masks of N COCO RLEs."""
    if not rles:
        return np.zeros((0, *size), bool)
    return np.stack([mask_utils.decode(r) > 0 for r in rles])


def score(
    pred: dict[str, list[dict]],
    truth: dict[str, tuple[int, np.ndarray]],
    control: bool = False,
    predicted: dict[str, list[float]] | None = None,
    stability: dict[str, list[float]] | None = None,
) -> list[SceneScore]:
    """Match each scene's mined masks (`pred`, file name -> RLEs) with its ground truth.

    control=True matches them with the *next* scene's ground truth instead: masks that
    follow the image score clearly lower there; masks that ignore it score the same.
    `predicted` / `stability` (file name -> the masks' predicted IoUs / stability
    scores) fill SceneScore.predicted / .stability.
    Masks are decoded one scene at a time (thousands of masks per scene at low thresholds).
    """
    names = list(truth)
    scores = []
    for i, name in enumerate(names):
        seed, gt = truth[names[(i + 1) % len(names)] if control else name]
        masks = decode(pred[name], gt.shape[1:])
        areas = gt.reshape(len(gt), -1).sum(axis=1)
        ious = iou_matrix(gt, masks)  # (K, N)
        best = ious.max(axis=1) if len(masks) else np.zeros(len(gt))
        actual = ious.max(axis=0) if len(gt) else np.zeros(len(masks))
        given, stable = (
            np.asarray(values[name], dtype=np.float64) if values else np.zeros(0)
            for values in (predicted, stability)
        )
        for what, values, got in (
            ("predicted IoUs", predicted, given),
            ("stability scores", stability, stable),
        ):
            if values and len(got) != len(masks):
                raise ValueError(f"{name}: {len(got)} {what} for {len(masks)} masks")
        scores.append(SceneScore(name, seed, best, len(masks), areas, given, actual, stable, ious))
    return scores


# Bins of predicted IoU for the reliability figures: [0, 0.1), ..., [0.9, 1.0]; values
# outside [0, 1] (a regression head can stray) go to the end bins.
CALIBRATION_BINS = np.linspace(0.0, 1.0, 11)


def calibration(scores: Sequence[SceneScore], bins: np.ndarray = CALIBRATION_BINS) -> dict:
    """Predicted against actual IoU over all mined masks of `scores` (needs `predicted`).

    Returns masks (count), mean_abs_error (mean |predicted - actual|), matched@0.75 (the
    share of masks whose actual IoU is >= 0.75), scenes_with_masks, and per bin of
    predicted IoU: bin_edges (B + 1,), bin_count, bin_predicted and bin_actual (B,) means
    (NaN for empty bins).
    """
    predicted = np.concatenate([np.zeros(0), *(s.predicted for s in scores)])
    actual = np.concatenate([np.zeros(0), *(s.actual for s in scores)])
    if len(predicted) != len(actual):
        raise ValueError("scores without predicted IoUs (score(..., predicted=...))")
    index = np.clip(np.digitize(predicted, bins) - 1, 0, len(bins) - 2)
    count = np.bincount(index, minlength=len(bins) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(index, predicted, len(bins) - 1) / count
        mean_act = np.bincount(index, actual, len(bins) - 1) / count
    return {
        "masks": len(predicted),
        "mean_abs_error": float(np.abs(predicted - actual).mean()) if len(actual) else np.nan,
        "matched@0.75": float((actual >= 0.75).mean()) if len(actual) else np.nan,
        "scenes_with_masks": sum(1 for s in scores if s.masks),
        "bin_edges": bins,
        "bin_count": count,
        "bin_predicted": mean_pred,
        "bin_actual": mean_act,
    }


# Threshold pairs of the sweep: the generator's (pred_iou_thresh, stability_score_thresh).
SWEEP_IOU = (0.0, 0.5, 0.6, 0.7, 0.8, 0.88)
SWEEP_STABILITY = (0.0, 0.8, 0.9, 0.95)


def threshold_sweep(
    scores: Sequence[SceneScore],
    iou_thresholds: Sequence[float] = SWEEP_IOU,
    stability_thresholds: Sequence[float] = SWEEP_STABILITY,
) -> list[dict]:
    """What each (pred_iou_thresh, stability_score_thresh) pair would keep of these mined
    masks, by the generator's rules (predicted IoU > t, stability >= t); needs
    `predicted` and `stability` in `scores`.

    Exact for the predicted-IoU threshold, since box NMS keeps higher-scored masks first
    (filtering before or after it keeps the same set); for the stability threshold a
    real run at that pair can keep a few more (a mask dropped by NMS here may have lost
    to one that fails stability). Per pair: masks_per_image, scenes_with_masks,
    matched@0.75 (share of the kept masks matching an object at IoU >= 0.75),
    mean_abs_error (calibration over the kept masks), recall@0.75 over the objects.
    """
    rows = []
    for t_iou in iou_thresholds:
        for t_stab in stability_thresholds:
            kept, matched, errors, recalled, objects, scenes = 0, 0, [], 0, 0, 0
            for s in scores:
                if len(s.predicted) != s.masks or len(s.stability) != s.masks:
                    raise ValueError(f"{s.name}: sweep needs predicted IoUs and stability")
                keep = (s.predicted > t_iou) & (s.stability >= t_stab)
                kept += int(keep.sum())
                scenes += bool(keep.any())
                matched += int((s.actual[keep] >= 0.75).sum())
                errors.append(np.abs(s.predicted[keep] - s.actual[keep]))
                objects += len(s.best_ious)
                if keep.any() and len(s.best_ious):
                    recalled += int((s.ious[:, keep].max(axis=1) >= 0.75).sum())
            error = np.concatenate(errors) if errors else np.zeros(0)
            rows.append(
                {
                    "pred_iou_thresh": t_iou,
                    "stability_score_thresh": t_stab,
                    "masks_per_image": kept / max(len(scores), 1),
                    "scenes_with_masks": scenes,
                    "matched@0.75": matched / kept if kept else np.nan,
                    "mean_abs_error": float(error.mean()) if len(error) else np.nan,
                    "recall@0.75": recalled / objects if objects else np.nan,
                }
            )
    return rows


def format_sweep(rows: Sequence[dict], scenes: int) -> str:
    lines = [
        "threshold sweep over the kept masks (exact for pred_iou_thresh; at a stability "
        "threshold a real run keeps a few more):",
        f"  {'pred_iou':>8} {'stability':>9} {'masks/img':>9} {'scenes':>7} "
        f"{'matched@0.75':>12} {'|error|':>7} {'R@0.75':>6}",
    ]
    for r in rows:
        lines.append(
            f"  {r['pred_iou_thresh']:>8.2f} {r['stability_score_thresh']:>9.2f} "
            f"{r['masks_per_image']:>9.1f} {r['scenes_with_masks']:>3} of {scenes:<3} "
            f"{r['matched@0.75']:>12.3f} {r['mean_abs_error']:>7.3f} {r['recall@0.75']:>6.3f}"
        )
    return "\n".join(lines)


def format_calibration(cal: dict, scenes: int) -> str:
    """The calibration figures in words, one line per non-empty bin."""
    lines = [
        f"calibration over {cal['masks']} kept masks: mean |predicted IoU - actual IoU vs "
        f"best-matching object| {cal['mean_abs_error']:.3f}; masks matching an object at "
        f"IoU >= 0.75: {cal['matched@0.75']:.3f}; scenes with masks kept: "
        f"{cal['scenes_with_masks']} of {scenes}"
    ]
    edges = cal["bin_edges"]
    for i, n in enumerate(cal["bin_count"]):
        if n:
            lines.append(
                f"  predicted {edges[i]:.1f}-{edges[i + 1]:.1f}: {n:>6} masks, mean predicted "
                f"{cal['bin_predicted'][i]:.3f}, mean actual {cal['bin_actual'][i]:.3f}"
            )
    return "\n".join(lines)


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
