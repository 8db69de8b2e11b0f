"""Building blocks of SAM's automatic mask generator (AMG): pure tensor/numpy functions.

Nothing here holds state or knows about the model; the generator composes these pieces:
point grids and crop boxes to prompt with, stability scores and boxes to filter masks,
box NMS to deduplicate them, uncropping to map crop results back to the image, COCO RLE
to store them and small-region cleanup to tidy them.

Conventions:

- Boxes are XYXY. Boxes from `masks_to_boxes` use the *inclusive* max pixel index
  (a single pixel at (x, y) gives [x, y, x, y]); crop boxes are half-open pixel ranges
  (x1, y1 exclusive), so crop sizes are x1 - x0 by y1 - y0.
- Points are xy; normalised grids lie in [0, 1].
- RLE is COCO's: runs over the mask in column-major (Fortran) order, starting with a run
  of zeros (length 0 when the first pixel is set); "size" is [h, w].
- Torch functions keep their outputs on the input's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import product
from typing import Any, Literal

import numpy as np
import torch
from pycocotools import mask as mask_utils
from scipy import ndimage

RLE = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Prompt points and crops
# ---------------------------------------------------------------------------------------------


def build_point_grid(n_per_side: int) -> np.ndarray:
    """Cell centres of an n x n grid over the unit square.

    Returns (n*n, 2) float64 xy in [0, 1], row by row: x varies fastest.
    """
    if n_per_side < 1:
        raise ValueError(f"n_per_side must be >= 1, got {n_per_side}")
    offset = 1 / (2 * n_per_side)
    coords = np.linspace(offset, 1 - offset, n_per_side)
    ys, xs = np.meshgrid(coords, coords, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One point grid per crop layer 0..n_layers (n_layers + 1 grids, as `generate_crop_boxes`).

    Layer i has int(n_per_side / scale_per_layer**i) points per side, since its crops are
    smaller and need fewer prompts to cover the same detail.
    """
    return [build_point_grid(int(n_per_side / scale_per_layer**i)) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Overlapping crops of an image: the whole image, then 2**i x 2**i crops for layer i.

    im_size is (h, w) pixels. Returns XYXY int crop boxes (half-open, clipped to the image)
    and the layer index of each. Within a layer, boxes are ordered x0-major, then y0.
    """
    im_h, im_w = im_size
    crop_boxes = [[0, 0, im_w, im_h]]
    layer_idxs = [0]
    short_side = min(im_h, im_w)
    for layer in range(1, n_layers + 1):
        n_crops = 2**layer
        # The overlap shrinks with the crop size so deeper layers overlap proportionally.
        overlap = int(overlap_ratio * short_side * (2 / n_crops))
        crop_w = _crop_len(im_w, n_crops, overlap)
        crop_h = _crop_len(im_h, n_crops, overlap)
        x0s = [int((crop_w - overlap) * k) for k in range(n_crops)]
        y0s = [int((crop_h - overlap) * k) for k in range(n_crops)]
        for x0, y0 in product(x0s, y0s):
            crop_boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layer_idxs.append(layer)
    return crop_boxes, layer_idxs


def _crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
    # n crops with n - 1 overlaps must span the whole side.
    return math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops)


# ---------------------------------------------------------------------------------------------
# Scores and boxes of masks
# ---------------------------------------------------------------------------------------------


def calculate_stability_score(
    mask_logits: torch.Tensor,
    mask_threshold: float,
    threshold_offset: float,
    chunk: int | None = None,
) -> torch.Tensor:
    """IoU between the masks binarised at mask_threshold +/- threshold_offset.

    mask_logits is (..., H, W) float; returns (...) float32. The high-threshold mask lies
    inside the low-threshold one, so the IoU is count(> thr + off) / count(> thr - off).
    A map with nothing above the low threshold gives NaN (0 / 0), which fails any
    `score >= thresh` filter. `chunk` bounds peak memory to that many leading maps at a time.
    """
    *lead, h, w = mask_logits.shape
    flat = mask_logits.reshape(-1, h, w)
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    step = chunk or max(flat.shape[0], 1)
    hi, lo = mask_threshold + threshold_offset, mask_threshold - threshold_offset
    inter, union = [], []
    for start in range(0, flat.shape[0], step):
        part = flat[start : start + step]
        inter.append(_count_above(part, hi))
        union.append(_count_above(part, lo))
    if not inter:
        return torch.empty(lead, dtype=torch.float32, device=mask_logits.device)
    return stability_from_counts(torch.cat(inter), torch.cat(union)).reshape(lead)


def stability_from_counts(inter: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """(...) integer counts of the pixels above the high and the low threshold ->
    (...) float32 stability scores (NaN where union is 0)."""
    # float32 division is exact-input for counts below 2**24 pixels per map.
    return inter.float() / union.float()


def _count_above(maps: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, H, W) -> (B,) int32 count of values > threshold, summed exactly in integers."""
    # Row sums in int16 halve the temporary versus int32; only valid while a row can't overflow.
    row_dtype = torch.int16 if maps.shape[-1] <= torch.iinfo(torch.int16).max else torch.int32
    return (maps > threshold).sum(-1, dtype=row_dtype).sum(-1, dtype=torch.int32)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes of masks, with inclusive max indices.

    masks is (..., H, W) bool; returns (..., 4) int64 [x0, y0, x1, y1] where x1/y1 are the
    last set column/row. Empty masks give [0, 0, 0, 0].
    """
    lead = masks.shape[:-2]
    if masks.numel() == 0:
        return torch.zeros((*lead, 4), dtype=torch.long, device=masks.device)
    masks = masks.bool()
    rows = masks.any(dim=-1)  # (..., H): rows holding any set pixel
    cols = masks.any(dim=-2)  # (..., W)
    y0, y1 = _first_last(rows)
    x0, x1 = _first_last(cols)
    boxes = torch.stack([x0, y0, x1, y1], dim=-1)
    empty = ~rows.any(dim=-1, keepdim=True)
    return boxes.masked_fill(empty, 0)


def _first_last(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., L) bool -> first and last True index along the last dim, (...) int64 each.

    All-False rows give first = L, last = 0 (the caller zeroes them).
    """
    n = flags.shape[-1]
    idx = torch.arange(n, device=flags.device)
    # Unset positions are pushed past either end so they never win the min/max.
    first = torch.where(flags, idx, n).amin(dim=-1)
    last = torch.where(flags, idx, 0).amax(dim=-1)
    return first, last


def box_xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) XYXY -> (..., 4) [x0, y0, x1 - x0, y1 - y0], same dtype."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)


# ---------------------------------------------------------------------------------------------
# Mapping crop results back to the image
# ---------------------------------------------------------------------------------------------


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """(..., 4) XYXY boxes in crop coordinates -> image coordinates, same dtype."""
    x0, y0 = crop_box[0], crop_box[1]
    offset = torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype, device=boxes.device)
    return boxes + offset


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    """(..., 2) xy points in crop coordinates -> image coordinates, same dtype."""
    offset = torch.tensor(crop_box[:2], dtype=points.dtype, device=points.device)
    return points + offset


def is_box_near_crop_edge(
    boxes: torch.Tensor,
    crop_box: list[int],
    orig_box: list[int],
    atol: float = 20.0,
) -> torch.Tensor:
    """Whether boxes touch a crop edge that is not also an image edge.

    boxes is (N, 4) XYXY in crop coordinates; crop_box and orig_box (the image,
    [0, 0, W, H]) are XYXY in image pixels; atol is in pixels. Returns (N,) bool. Such masks
    are likely cut off by the crop, so the generator drops them.
    """
    crop = torch.as_tensor(crop_box, dtype=torch.float32, device=boxes.device)
    orig = torch.as_tensor(orig_box, dtype=torch.float32, device=boxes.device)
    img_boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(img_boxes, crop, atol=atol, rtol=0)
    near_image = torch.isclose(img_boxes, orig, atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=-1)


# ---------------------------------------------------------------------------------------------
# Non-maximum suppression
# ---------------------------------------------------------------------------------------------


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """(N, 4) x (M, 4) float XYXY -> (N, M) IoU with area (x1 - x0) * (y1 - y0).

    Pairs whose union is empty (both boxes zero-area) give NaN.
    """
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


def batched_box_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    categories: torch.Tensor,
    iou_threshold: float,
    chunk: int = 1024,
) -> torch.Tensor:
    """Greedy per-category NMS, like torchvision's batched_nms.

    boxes (N, 4) XYXY float (ints are promoted to float32), scores (N,), categories (N,) int.
    A box is dropped if its IoU with a kept, higher-ranked box of the same category is
    strictly greater than iou_threshold; boxes of different categories never suppress each
    other. Rank is a stable sort by descending score, so equal scores rank by lower original
    index first. Returns int64 indices of kept boxes in rank order. `chunk` bounds the rows
    of float IoU computed at once; the boolean suppression matrix is always (N, N).
    """
    n = boxes.shape[0]
    device = boxes.device
    if n == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    if not boxes.is_floating_point():
        boxes = boxes.float()
    order = torch.sort(scores, descending=True, stable=True).indices
    boxes, categories = boxes[order], categories[order]

    # suppresses[i, j]: ranked box i would suppress ranked box j if i is kept.
    suppresses = torch.empty((n, n), dtype=torch.bool, device=device)
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        same_cat = categories[rows, None] == categories[None, :]
        suppresses[rows] = (box_iou(boxes[rows], boxes) > iou_threshold) & same_cat
    # Only higher-ranked boxes suppress, which also drops the diagonal.
    suppresses = torch.triu(suppresses, diagonal=1).cpu().numpy()

    # The greedy pass is inherently sequential; a numpy loop avoids a device sync per box.
    removed = np.zeros(n, dtype=bool)
    for i in range(n):
        if not removed[i]:
            removed |= suppresses[i]
    keep = torch.from_numpy(~removed).to(device)
    return order[keep]


# ---------------------------------------------------------------------------------------------
# COCO run-length encoding
# ---------------------------------------------------------------------------------------------


def masks_to_rle(masks: torch.Tensor) -> list[RLE]:
    """(N, H, W) bool masks -> uncompressed COCO RLE dicts {"size": [H, W], "counts": [...]}.

    counts are run lengths over column-major pixels, starting with zeros (so a mask whose
    first pixel is set starts with 0). Requires H, W >= 1.
    """
    n, h, w = masks.shape
    if n == 0:
        return []
    if h == 0 or w == 0:
        raise ValueError(f"cannot encode empty {h}x{w} masks")
    # Transposing makes the row-major flatten walk pixels in COCO's column-major order.
    flat = masks.bool().transpose(1, 2).reshape(n, h * w)
    # A run boundary sits before pixel 0, before every change and after the last pixel,
    # so each mask's consecutive boundaries delimit exactly its runs.
    edge = torch.ones((n, 1), dtype=torch.bool, device=masks.device)
    boundaries = torch.cat([edge, flat[:, 1:] != flat[:, :-1], edge], dim=1)  # (N, HW + 1)
    mask_idx, pos = boundaries.nonzero(as_tuple=True)  # sorted by mask, then position
    same_mask = mask_idx[1:] == mask_idx[:-1]
    lengths = (pos[1:] - pos[:-1])[same_mask].tolist()
    runs_per_mask = (boundaries.sum(dim=1) - 1).tolist()
    starts_with_one = flat[:, 0].tolist()

    out, offset = [], 0
    for n_runs, first in zip(runs_per_mask, starts_with_one):
        counts = ([0] if first else []) + lengths[offset : offset + n_runs]
        offset += n_runs
        out.append({"size": [h, w], "counts": counts})
    return out


def coco_encode(masks: np.ndarray | torch.Tensor) -> list[RLE]:
    """(N, H, W) bool masks -> compressed COCO RLE dicts with str (utf-8) counts, for JSON."""
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    return coco_encode_column_major(masks.to(torch.bool).transpose(1, 2))


def coco_encode_column_major(masks_t: torch.Tensor) -> list[RLE]:
    """(N, W, H) bool masks *stored transposed* -> COCO RLE of the (H, W) masks.

    pycocotools reads masks in column-major order, which is the memory layout of a
    contiguous (N, W, H) tensor: no transposing copy is made. Same output as
    `coco_encode(masks_t.transpose(1, 2))`.
    """
    if masks_t.shape[0] == 0:
        return []
    column_major = masks_t.contiguous().cpu().view(torch.uint8).numpy()
    rles = mask_utils.encode(column_major.transpose(2, 1, 0))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("utf-8")
    return rles


# pycocotools 2.0.11's area() holds the RLE count in a uint8 and raises OverflowError
# under numpy 2 for 256 or more RLEs at once.
_AREA_BATCH = 255


def rle_areas(rles: Sequence[RLE]) -> np.ndarray:
    """(N,) int64 pixel counts of COCO RLEs, read from their runs."""
    parts = [
        mask_utils.area(list(rles[i : i + _AREA_BATCH])).astype(np.int64)
        for i in range(0, len(rles), _AREA_BATCH)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Small-region cleanup
# ---------------------------------------------------------------------------------------------

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: Literal["holes", "islands"]
) -> tuple[np.ndarray, bool]:
    """Fill small holes in, or remove small islands from, a (H, W) bool mask.

    Components are 8-connected; area_thresh is in pixels and "small" means size < area_thresh.
    - "holes": every background component that is small becomes foreground (a background
      region touching the image border is treated like any other).
    - "islands": every small foreground component is removed, except that if all of them
      are small the largest is kept (ties: the lowest scipy label, i.e. the component
      reached first in a row-major scan).
    Returns (new (H, W) bool mask, touched): touched is True whenever a small region
    was found, even if the result equals the input (a lone small island is kept). The
    generator scores touched masks lower in its final NMS; the original SAM does the
    same, so this keeps its choice of masks.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    fill_holes = mode == "holes"
    working = ~mask if fill_holes else mask
    labels, _ = ndimage.label(working, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel())[1:]  # label 0 is the complement, not a component
    small = np.flatnonzero(sizes < area_thresh) + 1
    if small.size == 0:
        return mask, False
    if fill_holes:
        return mask | np.isin(labels, small), True
    keep = np.flatnonzero(sizes >= area_thresh) + 1
    if keep.size == 0:
        keep = np.array([np.argmax(sizes) + 1])  # argmax picks the lowest label on ties
    return np.isin(labels, keep), True
