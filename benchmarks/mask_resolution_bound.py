"""How well can any SAM of a given embedding grid fit the held-out scenes' objects?

SAM predicts low-res mask logits at 4x its embedding grid (image_size / patch_size * 4
per side) and upsamples them bilinearly to the image. This bounds mask quality from
above, whatever the weights: an object thinner than a low-res cell cannot be drawn.
For each ground-truth object of the held-out scenes (the ones benchmarks/quality.py
scores), the best-case logits are its signed distance to the boundary, averaged over
each low-res cell; upsampled and thresholded at 0 as inference does, their IoU with
the object is what a perfect model of that grid could reach. Prints, per low-res
side, recall at IoU 0.5 / 0.75 / 0.9 and the mean IoU.

  python benchmarks/mask_resolution_bound.py [--scenes 10] [--sides 64,128]

(256 px scenes: side 64 is patch size 16, side 128 patch size 8.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.evaluate import held_out_scenes


def best_case_iou(mask: np.ndarray, side: int) -> float:
    """IoU with (H, W) bool `mask` of its signed distance pooled to side x side and
    upsampled back bilinearly (align_corners=False, as SAM's postprocessing)."""
    inside = distance_transform_edt(mask) - distance_transform_edt(~mask)
    logits = torch.from_numpy(inside).float()[None, None]
    low = F.interpolate(logits, size=(side, side), mode="area")
    up = F.interpolate(low, size=mask.shape, mode="bilinear", align_corners=False)[0, 0] > 0
    truth = torch.from_numpy(mask)
    return float((up & truth).sum() / (up | truth).sum())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=10)
    parser.add_argument("--sides", default="64,128", help="low-res mask sides to test")
    args = parser.parse_args(argv)
    scenes = held_out_scenes(args.scenes)
    masks = [m for scene in scenes for m in scene.masks]
    areas = np.array([m.sum() for m in masks])
    print(
        f"{len(scenes)} held-out scenes, {len(masks)} objects, area px "
        f"p5/p50/p95 {np.percentile(areas, 5):.0f}/{np.median(areas):.0f}/"
        f"{np.percentile(areas, 95):.0f}"
    )
    for side in (int(s) for s in args.sides.split(",")):
        ious = np.array([best_case_iou(m, side) for m in masks])
        recalls = " ".join(f"@{t}: {(ious >= t).mean():.3f}" for t in (0.5, 0.75, 0.9))
        print(f"low-res side {side:4d}: recall {recalls}, mean IoU {ious.mean():.3f}")


if __name__ == "__main__":
    main()
