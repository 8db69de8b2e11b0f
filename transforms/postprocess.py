"""Quality filtering and deduplication of mined masks, per image.

Both run after the generator, so they can be stricter than its own thresholds
(e.g. mine once permissively, keep several filtered datasets). Each is a pure
function on a `MinedImage`, wrapped as a PTransform.
"""

from __future__ import annotations

import dataclasses
import math

import apache_beam as beam
import numpy as np
import torch
from pycocotools import mask as mask_utils

from sam_core.mask_ops import batched_box_nms

from .hierarchy import containment
from .metrics import counter as metrics_counter
from .records import MinedImage


@dataclasses.dataclass(frozen=True)
class QualityThresholds:
    """Keep non-empty masks with finite scores whose predicted_iou >= min_predicted_iou,
    stability_score >= min_stability_score and min_area_fraction <= area / image area
    <= max_area_fraction (SA-1B drops masks covering >= 95% of the image). A score
    threshold of None checks nothing: the generator's own thresholds stand."""

    min_predicted_iou: float | None = None
    min_stability_score: float | None = None
    min_area_fraction: float = 0.0
    max_area_fraction: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_area_fraction <= self.max_area_fraction <= 1.0:
            raise ValueError(
                "need 0 <= min_area_fraction <= max_area_fraction <= 1, got "
                f"{self.min_area_fraction}, {self.max_area_fraction}"
            )


def is_valid_mask(mask: dict) -> bool:
    """Whether a generator record can be a row: some pixels and finite scores.

    At a stability threshold of 0 the generator (like the reference) keeps empty masks,
    whose stability score is 0/0 = NaN; no table row may hold a NaN or an empty mask.
    """
    scores = (mask["predicted_iou"], mask["stability_score"])
    return mask["area"] > 0 and all(math.isfinite(v) for v in scores)


def _first_time(mask: dict, seen: set[tuple]) -> bool:
    key = (
        mask["segmentation"]["counts"],
        tuple(mask["crop_box"]),
        tuple(tuple(p) for p in mask["point_coords"]),
    )
    if key in seen:
        return False
    seen.add(key)
    return True


def filter_masks(image: MinedImage, thresholds: QualityThresholds) -> MinedImage:
    """`image` with only its valid masks (`is_valid_mask`) that pass `thresholds`, each
    distinct mask once: when outputs of one prompt are the same mask (same RLE, crop box
    and point, hence the same mask_id), only the first, best-scored, is kept."""
    pixels = image.width * image.height
    low, high = thresholds.min_area_fraction * pixels, thresholds.max_area_fraction * pixels
    min_iou, min_stability = thresholds.min_predicted_iou, thresholds.min_stability_score
    seen: set[tuple] = set()
    kept = [
        m
        for m in image.masks
        if is_valid_mask(m)
        and (min_iou is None or m["predicted_iou"] >= min_iou)
        and (min_stability is None or m["stability_score"] >= min_stability)
        and low <= m["area"] <= high
        and _first_time(m, seen)  # last: a duplicate counts only among the kept masks
    ]
    return dataclasses.replace(image, masks=kept)


DEDUP_BY = ("box", "mask", "containment")


def deduplicate_masks(image: MinedImage, iou_threshold: float, by: str = "box") -> MinedImage:
    """Greedy NMS by predicted IoU: drop a mask whose box IoU (or mask IoU, with
    by="mask") with a better-scored kept mask exceeds iou_threshold.

    by="containment" compares intersection over the smaller mask's area instead (labelme's
    mask NMS): a part nested in a better-scored whole, or a whole around a better-scored
    part, is dropped, leaving one granularity per object."""
    masks = image.masks
    if len(masks) < 2 or iou_threshold >= 1.0:  # an IoU never exceeds 1: nothing to drop
        return image
    scores = torch.tensor([m["predicted_iou"] for m in masks], dtype=torch.float32)
    if by == "box":
        xywh = torch.tensor([m["bbox"] for m in masks], dtype=torch.float32)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1)
        keep = batched_box_nms(
            boxes, scores, torch.zeros(len(masks), dtype=torch.int64), iou_threshold
        ).tolist()
    elif by in ("mask", "containment"):
        rles = [m["segmentation"] for m in masks]
        if by == "mask":
            overlap = np.asarray(mask_utils.iou(rles, rles, [0] * len(rles)))
        else:
            # held[i, j] = |i & j| / |i|; over the smaller mask = the larger of the two ways.
            held = containment(rles, rles)
            overlap = np.maximum(held, held.T)
        keep, suppressed = [], np.zeros(len(masks), dtype=bool)
        for i in torch.argsort(scores, descending=True, stable=True).tolist():
            if not suppressed[i]:
                keep.append(i)
                suppressed |= overlap[i] > iou_threshold
    else:
        raise ValueError(f"deduplicate by one of {DEDUP_BY}, got {by!r}")
    return dataclasses.replace(image, masks=[masks[i] for i in keep])


class _Counted(beam.DoFn):
    def __init__(self, fn, counter: str, **kwargs) -> None:
        self.fn, self.kwargs = fn, kwargs
        self.dropped = metrics_counter(counter)

    def process(self, image: MinedImage):
        out = self.fn(image, **self.kwargs)
        self.dropped.inc(len(image.masks) - len(out.masks))
        yield out


class FilterMasks(beam.PTransform):
    """MinedImage -> MinedImage with only the masks passing `thresholds`."""

    def __init__(self, thresholds: QualityThresholds) -> None:
        super().__init__()
        self.thresholds = thresholds

    def expand(self, images):
        return images | beam.ParDo(
            _Counted(filter_masks, "masks_dropped_by_quality", thresholds=self.thresholds)
        )


class DeduplicateMasks(beam.PTransform):
    """MinedImage -> MinedImage without near-duplicate masks (NMS within the image)."""

    def __init__(self, iou_threshold: float, by: str = "box") -> None:
        super().__init__()
        if by not in DEDUP_BY:
            raise ValueError(f"deduplicate by one of {DEDUP_BY}, got {by!r}")
        self.iou_threshold, self.by = iou_threshold, by

    def expand(self, images):
        return images | beam.ParDo(
            _Counted(
                deduplicate_masks,
                "masks_dropped_by_dedup",
                iou_threshold=self.iou_threshold,
                by=self.by,
            )
        )
