"""Evaluate a SAM model on held-out synthetic scenes (seeds >= scenes.EVAL_SEED_START).

Two measures:
- automatic mask generation (AMG, default parameters unless given): for each
  ground-truth object, the best mask IoU of any generated mask; recall at IoU
  0.5 / 0.75 is the fraction of objects whose best IoU reaches the threshold;
- single-point prompts at each object's innermost pixel: mIoU of the mask with
  the highest predicted IoU (top-1) and of the best of the three (oracle).

Usage:
    python -m training.evaluate --checkpoint sam_core/weights/sam_synthetic.pth --scenes 20
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from sam_core.build import build_sam
from sam_core.generator import AutomaticMaskGenerator
from sam_core.predictor import SamPredictor
from sam_core.sam import Sam

from .scenes import EVAL_SEED_START, Scene, generate_scene


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(K, N) IoU of each of K (H, W) bool ground-truth masks with each of N predicted."""
    if len(gt) == 0 or len(pred) == 0:
        return np.zeros((len(gt), len(pred)))
    g = torch.from_numpy(gt.reshape(len(gt), -1)).float()
    p = torch.from_numpy(pred.reshape(len(pred), -1)).float()
    inter = g @ p.T
    union = g.sum(1, keepdim=True) + p.sum(1)[None] - inter
    return (inter / union.clamp(min=1)).numpy()


def best_ious(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(K,) best IoU of each of K (H, W) bool ground-truth masks over N predicted ones."""
    if len(gt) == 0:
        return np.zeros(0)
    if len(pred) == 0:
        return np.zeros(len(gt))
    return iou_matrix(gt, pred).max(axis=1)


RECALL_THRESHOLDS = (0.5, 0.75)


def match_summary(ious: Sequence[np.ndarray]) -> dict[str, float]:
    """recall@t (t in RECALL_THRESHOLDS), mean best IoU and object count over all objects.

    `ious`: per scene, the (K,) best IoUs of its ground-truth objects (see `best_ious`);
    recall@t is the fraction of all objects whose best IoU is at least t.
    """
    all_ious = np.concatenate([np.zeros(0), *(np.ravel(i) for i in ious)])
    found = {t: float((all_ious >= t).mean()) if len(all_ious) else 0.0 for t in RECALL_THRESHOLDS}
    return {
        **{f"recall@{t}": r for t, r in found.items()},
        "mean_best_iou": float(all_ious.mean()) if len(all_ious) else 0.0,
        "gt_objects": len(all_ious),
    }


def innermost_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of an (H, W) bool mask farthest from its boundary."""
    distance = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), mask.shape)
    return int(x), int(y)


def held_out_scenes(count: int, size: tuple[int, int] = (256, 256)) -> list[Scene]:
    """The first `count` evaluation scenes (seeds EVAL_SEED_START, +1, ...)."""
    return [generate_scene(EVAL_SEED_START + i, size) for i in range(count)]


def evaluate_amg(model: Sam, scenes: Sequence[Scene], **amg_kwargs) -> dict[str, float]:
    """AMG recall@0.5, recall@0.75, mean best IoU and mask counts over scenes."""
    generator = AutomaticMaskGenerator(model, **amg_kwargs)
    ious, counts = [], []
    start = time.perf_counter()
    for scene in scenes:
        records = generator.generate(scene.image)
        pred = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0,))
        ious.append(best_ious(scene.masks, pred))
        counts.append(len(records))
    return {
        **match_summary(ious),
        "masks_per_image": float(np.mean(counts)),
        "masks_min": int(np.min(counts)),
        "masks_max": int(np.max(counts)),
        "seconds_per_image": (time.perf_counter() - start) / len(scenes),
    }


def evaluate_points(model: Sam, scenes: Sequence[Scene]) -> dict[str, float]:
    """Single innermost-point prompt per object: top-1 and oracle (best of 3) mIoU."""
    predictor = SamPredictor(model)
    top1, oracle = [], []
    for scene in scenes:
        if len(scene.masks) == 0:
            continue
        embedding = predictor.encode([scene.image])[0]
        points = np.array([[innermost_point(m)] for m in scene.masks], dtype=np.float32)
        pred = predictor.predict(embedding, points, np.ones((len(points), 1), dtype=np.int64))
        masks = pred.masks.numpy()  # (K, 3, H, W)
        gt = torch.from_numpy(scene.masks)[:, None].float()
        m = torch.from_numpy(masks).float()
        inter = (m * gt).sum(dim=(-2, -1))
        union = m.sum(dim=(-2, -1)) + gt.sum(dim=(-2, -1)) - inter
        iou = inter / union.clamp(min=1)  # (K, 3)
        chosen = pred.iou_predictions.argmax(dim=1)
        top1.append(iou[torch.arange(len(iou)), chosen].numpy())
        oracle.append(iou.max(dim=1).values.numpy())
    return {
        "point_miou_top1": float(np.concatenate(top1).mean()),
        "point_miou_oracle": float(np.concatenate(oracle).mean()),
    }


def evaluate(model: Sam, count: int, amg: bool = True, **amg_kwargs) -> dict[str, float]:
    """Point and (optionally) AMG metrics on the first `count` held-out scenes."""
    scenes = held_out_scenes(count, (model.image_size, model.image_size))
    results = evaluate_points(model, scenes)
    if amg:
        results.update(evaluate_amg(model, scenes, **amg_kwargs))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--random", action="store_true", help="random weights, same config")
    parser.add_argument("--no-amg", action="store_true")
    parser.add_argument("--points-per-side", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model = build_sam(checkpoint=args.checkpoint)
    if args.random:
        torch.manual_seed(0)
        model = build_sam(model.config)
    results = evaluate(
        model, args.scenes, amg=not args.no_amg, points_per_side=args.points_per_side
    )
    for key, value in results.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
