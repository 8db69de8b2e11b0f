"""Compare two lists of automatic-mask-generator records (ours and the reference's).

Needs only pycocotools and scipy, so tests use it on committed golden records.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from pycocotools import mask as mask_utils
from scipy.optimize import linear_sum_assignment


@dataclasses.dataclass
class Match:
    """How well `ours` reproduces `reference`: counts, worst matched IoU and score errors."""

    n_ours: int
    n_reference: int
    n_matched: int  # one-to-one pairs with mask IoU >= min_iou and scores within tol
    worst_iou: float
    worst_predicted_iou_error: float
    worst_stability_error: float

    @property
    def identical(self) -> bool:
        return self.n_ours == self.n_reference == self.n_matched


def _coco(segmentation) -> dict:
    if isinstance(segmentation, np.ndarray):
        return mask_utils.encode(np.asfortranarray(segmentation.astype(np.uint8)))
    if isinstance(segmentation["counts"], list):
        h, w = segmentation["size"]
        return mask_utils.frPyObjects(segmentation, h, w)
    return segmentation


def _score_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b|, where NaN matches NaN (an empty mask's stability score is 0/0 in both
    implementations) and NaN against a number is an infinite error."""
    a, b = np.broadcast_arrays(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
    err = np.abs(a - b)
    err[np.isnan(a) & np.isnan(b)] = 0.0
    err[np.isnan(a) ^ np.isnan(b)] = np.inf
    return err


def match_records(
    ours: list[dict], reference: list[dict], min_iou: float = 0.99, score_tol: float = 1e-3
) -> Match:
    """Pair masks one-to-one by mask IoU (Hungarian), then check IoU and scores."""
    if not ours or not reference:
        return Match(len(ours), len(reference), 0, 1.0 if ours == reference else 0.0, 0.0, 0.0)
    a = [_coco(r["segmentation"]) for r in ours]
    b = [_coco(r["segmentation"]) for r in reference]
    iou = mask_utils.iou(a, b, [0] * len(b))  # (len(ours), len(reference))
    # pycocotools gives two empty masks IoU 0; they are the same (empty) mask.
    empty_a = np.array([r["area"] == 0 for r in ours])
    empty_b = np.array([r["area"] == 0 for r in reference])
    iou = np.where(empty_a[:, None] & empty_b[None, :], 1.0, iou)
    score_err = np.maximum(
        _score_error(
            np.array([r["predicted_iou"] for r in ours])[:, None],
            np.array([r["predicted_iou"] for r in reference])[None],
        ),
        _score_error(
            np.array([r["stability_score"] for r in ours])[:, None],
            np.array([r["stability_score"] for r in reference])[None],
        ),
    )
    # Prefer high IoU; among equal masks prefer matching scores.
    rows, cols = linear_sum_assignment(-(iou - np.minimum(score_err, 1.0) * 1e-3))
    pair_iou = iou[rows, cols]
    iou_err = _score_error(
        np.array([ours[i]["predicted_iou"] for i in rows]),
        np.array([reference[j]["predicted_iou"] for j in cols]),
    )
    stab_err = _score_error(
        np.array([ours[i]["stability_score"] for i in rows]),
        np.array([reference[j]["stability_score"] for j in cols]),
    )
    good = (pair_iou >= min_iou) & (iou_err <= score_tol) & (stab_err <= score_tol)
    return Match(
        len(ours),
        len(reference),
        int(good.sum()),
        float(pair_iou.min()),
        float(iou_err.max()),
        float(stab_err.max()),
    )
