"""Containment hierarchy of one image's masks (part, whole, subpart), on COCO RLE.

A mask's parent is the smallest other, strictly larger mask of the same image that holds at
least `threshold` of its pixels (intersection / this mask's area); a mask with none is at the
top (depth 0). Intersections are computed by pycocotools on the RLEs, never on full-size
arrays, and only for pairs whose boxes could pass: memory is a few (block, masks) matrices
of at most 500k entries for the box test, whatever the image size and the number of masks.
Pure functions, no Beam.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pycocotools import mask as mask_utils

from sam_core.mask_ops import rle_areas

DEFAULT_CONTAINMENT = 0.9
# Children per box test: (block, n) float64 matrices of at most 500k entries (4 MB each).
_MAX_BLOCK, _MAX_ENTRIES = 256, 500_000
_CHUNK = 64  # candidate parents per RLE intersection call, smallest first


def _rles(segmentations: Sequence[dict]) -> list[dict]:
    # pycocotools takes str or bytes counts; a copy so that callers' dicts stay untouched.
    return [{"size": list(s["size"]), "counts": s["counts"]} for s in segmentations]


def containment(inner: Sequence[dict], outer: Sequence[dict]) -> np.ndarray:
    """(len(inner), len(outer)) float64: |inner_i & outer_j| / |inner_i| (0 for an empty
    inner mask). pycocotools' crowd IoU divides the intersection by the first argument's
    area, which is exactly this."""
    if not inner or not outer:
        return np.zeros((len(inner), len(outer)))
    out = mask_utils.iou(_rles(inner), _rles(outer), [1] * len(outer))
    return np.asarray(out, dtype=np.float64).reshape(len(inner), len(outer))


def parents(
    segmentations: Sequence[dict],
    ids: Sequence[str],
    threshold: float = DEFAULT_CONTAINMENT,
) -> tuple[list[str | None], list[int]]:
    """The parent id (None at the top) and depth (0 at the top) of each mask.

    segmentations: COCO RLEs (``size`` (h, w), ``counts``) of one image's masks, all one
    size; ids: their ids (ties between equal-area candidate parents go to the smaller id,
    so the result does not depend on the input order).
    """
    n = len(segmentations)
    if len(ids) != n:
        raise ValueError(f"{n} segmentations but {len(ids)} ids")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"containment threshold must be in (0, 1], got {threshold}")
    if n == 0:
        return [], []
    if len({tuple(s["size"]) for s in segmentations}) > 1:
        raise ValueError("masks of one image must all have the same size")
    rles = _rles(segmentations)
    area = rle_areas(rles).astype(np.float64)
    xywh = mask_utils.toBbox(rles).astype(np.float64)
    x0, y0 = xywh[:, 0], xywh[:, 1]
    x1, y1 = x0 + xywh[:, 2], y0 + xywh[:, 3]
    # Candidate parents are tried smallest first (then by id): the first that holds enough
    # of a mask is its parent, so most masks need only one intersection call.
    order = np.array(sorted(range(n), key=lambda k: (area[k], ids[k])), dtype=np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    parent = np.full(n, -1, dtype=np.int64)
    step = max(1, min(_MAX_BLOCK, _MAX_ENTRIES // n))
    for start in range(0, n, step):
        block = np.arange(start, min(start + step, n))
        # The masks' intersection lies inside the boxes' intersection: a box overlap below
        # threshold * area rules the pair out without touching the RLEs.
        w = np.minimum(x1[block, None], x1[None]) - np.maximum(x0[block, None], x0[None])
        h = np.minimum(y1[block, None], y1[None]) - np.maximum(y0[block, None], y0[None])
        overlap = np.clip(w, 0, None) * np.clip(h, 0, None)
        # (1 - 1e-9): 0.9 * 100 is 90.00000000000001 in floats; a pre-test may only let
        # through more pairs than the exact one below, never fewer.
        needed = threshold * (1 - 1e-9) * area[block, None]
        possible = (area[None] > area[block, None]) & (overlap >= needed)
        for row, i in enumerate(block):
            if area[i] == 0:
                continue
            candidates = np.flatnonzero(possible[row])
            candidates = candidates[np.argsort(rank[candidates])]
            for c in range(0, len(candidates), _CHUNK):
                chunk = candidates[c : c + _CHUNK]
                held = containment([rles[i]], [rles[j] for j in chunk])[0]
                hits = np.flatnonzero(held >= threshold)
                if hits.size:
                    parent[i] = chunk[hits[0]]
                    break
    depth = np.zeros(n, dtype=np.int64)
    for i in order[::-1]:  # largest first: a parent is strictly larger, so it is done already
        if parent[i] >= 0:
            depth[i] = depth[parent[i]] + 1
    return [ids[p] if p >= 0 else None for p in parent], depth.tolist()
