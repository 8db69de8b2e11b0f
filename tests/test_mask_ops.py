"""AMG building blocks checked against naive loops and hand-computed cases."""

from collections import deque

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from sam_core.mask_ops import (
    batched_box_nms,
    box_iou,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    build_point_grid,
    calculate_stability_score,
    coco_encode,
    coco_encode_column_major,
    generate_crop_boxes,
    is_box_near_crop_edge,
    masks_to_boxes,
    masks_to_rle,
    remove_small_regions,
    rle_areas,
    stability_from_counts,
    uncrop_boxes_xyxy,
    uncrop_points,
)

# pycocotools' decode trips numpy 2's __array__(copy=) deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def random_masks(rng: np.random.Generator, n: int, h: int, w: int, p: float = 0.3) -> np.ndarray:
    return rng.random((n, h, w)) < p


# ---------------------------------------------------------------------------------------------
# Point grids and crops
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_point_grid_matches_loop(n):
    expected = [((i + 0.5) / n, (j + 0.5) / n) for j in range(n) for i in range(n)]
    grid = build_point_grid(n)
    assert grid.shape == (n * n, 2)
    assert grid.dtype == np.float64
    np.testing.assert_allclose(grid, np.array(expected), rtol=0, atol=1e-15)


def test_point_grid_hand_values():
    # x varies fastest: the second point is to the right of the first, not below it.
    np.testing.assert_allclose(
        build_point_grid(2), [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    )
    np.testing.assert_allclose(build_point_grid(1), [[0.5, 0.5]])


def test_point_grid_rejects_zero():
    with pytest.raises(ValueError):
        build_point_grid(0)


def test_layer_point_grids_one_per_crop_layer():
    grids = build_all_layer_point_grids(32, 2, 2)
    assert [len(g) for g in grids] == [32 * 32, 16 * 16, 8 * 8]
    np.testing.assert_array_equal(grids[1], build_point_grid(16))
    # int() truncates a non-integer division: 10 / 3 -> 3, 10 / 9 -> 1.
    assert [len(g) for g in build_all_layer_point_grids(10, 2, 3)] == [100, 9, 1]
    assert len(build_all_layer_point_grids(8, 0, 2)) == 1


def test_crop_boxes_layer_zero_only():
    boxes, layers = generate_crop_boxes((30, 50), 0, 0.5)
    assert boxes == [[0, 0, 50, 30]]
    assert layers == [0]


def test_crop_boxes_hand_computed_one_layer():
    # h=100, w=200: overlap = int(0.25 * 100 * 1) = 25
    # crop_w = ceil((25 + 200) / 2) = 113, crop_h = ceil((25 + 100) / 2) = 63
    # x0s = [0, 88], y0s = [0, 38]
    boxes, layers = generate_crop_boxes((100, 200), 1, 0.25)
    assert boxes == [
        [0, 0, 200, 100],
        [0, 0, 113, 63],
        [0, 38, 113, 100],
        [88, 0, 200, 63],
        [88, 38, 200, 100],
    ]
    assert layers == [0, 1, 1, 1, 1]


def test_crop_boxes_two_layers_hand_computed_second_layer():
    # Layer 2 of h=w=100, ratio 0.5: overlap = int(0.5 * 100 * 0.5) = 25,
    # crop = ceil((25 * 3 + 100) / 4) = 44, starts = [0, 19, 38, 57].
    boxes, layers = generate_crop_boxes((100, 100), 2, 0.5)
    assert layers == [0] + [1] * 4 + [2] * 16
    starts = [0, 19, 38, 57]
    expected = [[x, y, min(x + 44, 100), min(y + 44, 100)] for x in starts for y in starts]
    assert boxes[5:] == expected


@pytest.mark.parametrize("im_size", [(480, 640), (333, 1000), (1000, 333), (17, 23)])
@pytest.mark.parametrize("ratio", [0.0, 512 / 1500, 0.5])
def test_crop_boxes_cover_image_inside_bounds(im_size, ratio):
    h, w = im_size
    boxes, layers = generate_crop_boxes(im_size, 2, ratio)
    for layer in (1, 2):
        covered = np.zeros((h, w), dtype=int)
        for box, lay in zip(boxes, layers):
            if lay == layer:
                x0, y0, x1, y1 = box
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
                covered[y0:y1, x0:x1] += 1
        assert covered.min() >= 1


# ---------------------------------------------------------------------------------------------
# Stability score
# ---------------------------------------------------------------------------------------------


def naive_stability(logits: np.ndarray, thr: float, off: float) -> np.ndarray:
    flat = logits.reshape(-1, *logits.shape[-2:])
    out = []
    for m in flat:
        inter = int(np.count_nonzero(m > thr + off))
        union = int(np.count_nonzero(m > thr - off))
        out.append(np.float32(inter) / np.float32(union))
    return np.array(out, dtype=np.float32).reshape(logits.shape[:-2])


def test_stability_hand_computed_strict_thresholds():
    # Values equal to a threshold are not above it.
    logits = torch.tensor([[[-2.0, -1.0, 0.0], [0.5, 1.0, 3.0]]])
    score = calculate_stability_score(logits, 0.0, 1.0)
    # > 1.0: {3.0} -> 1;  > -1.0: {0.0, 0.5, 1.0, 3.0} -> 4
    assert score.tolist() == [0.25]
    assert score.dtype == torch.float32


def test_stability_matches_naive_with_leading_dims_and_chunks():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(2, 3, 17, 29)).astype(np.float32)
    expected = naive_stability(logits, 0.0, 1.0)
    t = torch.from_numpy(logits)
    for chunk in (None, 1, 4, 100):
        score = calculate_stability_score(t, 0.0, 1.0, chunk=chunk)
        assert score.shape == (2, 3)
        np.testing.assert_array_equal(score.numpy(), expected)


def test_stability_nonzero_mask_threshold():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(5, 8, 8)).astype(np.float32)
    score = calculate_stability_score(torch.from_numpy(logits), 1.5, 0.5)
    np.testing.assert_array_equal(score.numpy(), naive_stability(logits, 1.5, 0.5))


def test_stability_counts_exactly_on_wide_rows():
    # 40000 > int16 max: a row sum in int16 would overflow here.
    logits = torch.full((1, 2, 40000), 5.0)
    logits[0, 1, :30000] = 0.5  # 80000 above the low threshold, 50000 above the high one
    score = calculate_stability_score(logits, 0.0, 1.0)
    assert score.item() == pytest.approx(50000 / 80000, abs=0)


def test_stability_empty_union_is_nan_and_empty_input():
    score = calculate_stability_score(torch.full((2, 4, 4), -10.0), 0.0, 1.0)
    assert torch.isnan(score).all()
    empty = calculate_stability_score(torch.zeros((0, 4, 4)), 0.0, 1.0)
    assert empty.shape == (0,)
    assert empty.dtype == torch.float32


def test_stability_from_counts_gives_the_score():
    maps = torch.randn(6, 13, 17, generator=torch.Generator().manual_seed(3)) * 2
    maps[4] = -5.0  # nothing above either threshold: NaN
    inter, union = (maps > 1.2).sum((1, 2)), (maps > -0.8).sum((1, 2))
    expected = calculate_stability_score(maps, 0.2, 1.0)
    torch.testing.assert_close(stability_from_counts(inter, union), expected, equal_nan=True)
    assert torch.isnan(stability_from_counts(inter, union)[4])


def test_stability_rejects_bad_chunk():
    with pytest.raises(ValueError):
        calculate_stability_score(torch.zeros((2, 4, 4)), 0.0, 1.0, chunk=0)


# ---------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------


def naive_box(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def test_masks_to_boxes_matches_naive():
    rng = np.random.default_rng(2)
    masks = np.zeros((2, 20, 13, 17), dtype=bool)
    for idx in np.ndindex(2, 20):
        # Random rectangles with sparse noise, plus some empty masks.
        if rng.random() < 0.2:
            continue
        y0, y1 = sorted(rng.integers(0, 13, 2))
        x0, x1 = sorted(rng.integers(0, 17, 2))
        masks[idx][y0 : y1 + 1, x0 : x1 + 1] = rng.random((y1 - y0 + 1, x1 - x0 + 1)) < 0.5
    expected = np.array([[naive_box(m) for m in row] for row in masks])
    boxes = masks_to_boxes(torch.from_numpy(masks))
    assert boxes.dtype == torch.long
    assert boxes.shape == (2, 20, 4)
    np.testing.assert_array_equal(boxes.numpy(), expected)


def test_masks_to_boxes_hand_cases():
    masks = torch.zeros((4, 5, 6), dtype=torch.bool)
    masks[0, 2, 3] = True  # single pixel: inclusive max equals min
    masks[1, 1:4, 0:6] = True  # touches left and right edges
    masks[2, 4, 5] = True  # bottom-right corner
    masks[2, 0, 0] = True  # top-left corner
    # masks[3] empty
    assert masks_to_boxes(masks).tolist() == [
        [3, 2, 3, 2],
        [0, 1, 5, 3],
        [0, 0, 5, 4],
        [0, 0, 0, 0],
    ]


def test_masks_to_boxes_empty_leading_shape():
    boxes = masks_to_boxes(torch.zeros((0, 5, 6), dtype=torch.bool))
    assert boxes.shape == (0, 4)
    assert masks_to_boxes(torch.zeros((3, 0, 6), dtype=torch.bool)).tolist() == [[0] * 4] * 3


def test_box_xyxy_to_xywh():
    boxes = torch.tensor([[1, 2, 4, 8], [0, 0, 0, 0]])
    out = box_xyxy_to_xywh(boxes)
    assert out.tolist() == [[1, 2, 3, 6], [0, 0, 0, 0]]
    assert out.dtype == boxes.dtype
    assert boxes.tolist() == [[1, 2, 4, 8], [0, 0, 0, 0]]  # input untouched


# ---------------------------------------------------------------------------------------------
# Uncropping
# ---------------------------------------------------------------------------------------------


def test_uncrop_boxes_and_points_keep_dtype():
    boxes = torch.tensor([[1, 2, 3, 4]], dtype=torch.int32)
    out = uncrop_boxes_xyxy(boxes, [10, 20, 50, 60])
    assert out.tolist() == [[11, 22, 13, 24]]
    assert out.dtype == torch.int32
    fboxes = uncrop_boxes_xyxy(torch.tensor([[0.5, 1.5, 2.5, 3.5]]), [10, 20, 50, 60])
    assert fboxes.tolist() == [[10.5, 21.5, 12.5, 23.5]]
    points = uncrop_points(torch.tensor([[1.0, 2.0], [0.0, 0.0]]), [10, 20, 50, 60])
    assert points.tolist() == [[11.0, 22.0], [10.0, 20.0]]
    assert points.dtype == torch.float32


def naive_near_crop_edge(boxes, crop_box, orig_box, atol):
    out = []
    x0, y0 = crop_box[:2]
    for b in boxes:
        img = [b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0]
        out.append(
            any(
                abs(v - c) <= atol and abs(v - o) > atol for v, c, o in zip(img, crop_box, orig_box)
            )
        )
    return out


def test_is_box_near_crop_edge_hand_cases():
    crop, orig = [100, 100, 300, 300], [0, 0, 400, 400]
    boxes = torch.tensor(
        [
            [5, 50, 60, 80],  # image x0 = 105, near crop left edge 100
            [50, 50, 150, 150],  # well inside
            [50, 50, 150, 185],  # image y1 = 285, near crop bottom 300
            [50, 50, 150, 179],  # image y1 = 279, 21 px away: not near
            [20, 20, 150, 150],  # image x0 = 120 exactly atol away: near (inclusive)
        ]
    )
    assert is_box_near_crop_edge(boxes, crop, orig).tolist() == [True, False, True, False, True]
    # A crop edge that is also an image edge does not count.
    corner_crop = [0, 0, 200, 200]
    boxes = torch.tensor([[0, 50, 60, 80], [50, 50, 195, 80]])
    assert is_box_near_crop_edge(boxes, corner_crop, orig).tolist() == [False, True]
    assert is_box_near_crop_edge(boxes, corner_crop, orig, atol=2.0).tolist() == [False, False]


def test_is_box_near_crop_edge_matches_naive():
    rng = np.random.default_rng(4)
    crop, orig = [37, 0, 237, 150], [0, 0, 237, 300]
    xy0 = rng.integers(0, 100, (200, 2))
    wh = rng.integers(0, 100, (200, 2))
    boxes = np.concatenate([xy0, xy0 + wh], axis=1)
    expected = naive_near_crop_edge(boxes.tolist(), crop, orig, 20.0)
    assert any(expected) and not all(expected)  # the sample exercises both outcomes
    for t in (torch.from_numpy(boxes), torch.from_numpy(boxes).float()):
        assert is_box_near_crop_edge(t, crop, orig).tolist() == expected


# ---------------------------------------------------------------------------------------------
# NMS
# ---------------------------------------------------------------------------------------------


def naive_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    union = area_a + area_b - inter
    return inter / union if union > 0 else float("nan")


def naive_nms(boxes, scores, cats, thr) -> list[int]:
    # Ties broken by lower index, matching the documented stable sort.
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept: list[int] = []
    for i in order:
        if all(cats[k] != cats[i] or not naive_iou(boxes[k], boxes[i]) > thr for k in kept):
            kept.append(i)
    return kept


def test_box_iou_matches_naive():
    rng = np.random.default_rng(5)
    xy = rng.integers(0, 20, (12, 2)).astype(np.float64)
    boxes = np.concatenate([xy, xy + rng.integers(1, 10, (12, 2))], axis=1)
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(boxes[:5]))
    expected = [[naive_iou(a, b) for b in boxes[:5]] for a in boxes]
    np.testing.assert_array_equal(iou.numpy(), np.array(expected))


def test_nms_threshold_is_strict():
    # IoU of these two is exactly 1 / 2.
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    scores, cats = torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.long)
    assert batched_box_nms(boxes, scores, cats, 0.5).tolist() == [0, 1]
    assert batched_box_nms(boxes, scores, cats, 0.49).tolist() == [0]


def test_nms_ties_keep_lower_index_and_sort_by_score():
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3 + [[50.0, 50, 60, 60]])
    scores = torch.tensor([0.5, 0.7, 0.7, 0.9])
    keep = batched_box_nms(boxes, scores, torch.zeros(4, dtype=torch.long), 0.5)
    assert keep.tolist() == [3, 1]
    assert keep.dtype == torch.long


def test_nms_categories_do_not_suppress_each_other():
    boxes = torch.tensor([[0.0, 0, 10, 10]] * 3)
    scores = torch.tensor([0.9, 0.8, 0.7])
    cats = torch.tensor([0, 1, 0])
    assert batched_box_nms(boxes, scores, cats, 0.5).tolist() == [0, 1]


def test_nms_suppressed_box_does_not_suppress():
    # A overlaps B, B overlaps C, A does not overlap C: greedy keeps A and C.
    boxes = torch.tensor([[0.0, 0, 10, 10], [4.0, 0, 14, 10], [8.0, 0, 18, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep = batched_box_nms(boxes, scores, torch.zeros(3, dtype=torch.long), 0.3)
    assert keep.tolist() == [0, 2]


def test_nms_degenerate_and_empty():
    # Zero-area boxes have a NaN IoU with each other, which never exceeds the threshold.
    boxes = torch.tensor([[1.0, 1, 1, 1], [1.0, 1, 1, 1]])
    cats = torch.zeros(2, dtype=torch.long)
    assert batched_box_nms(boxes, torch.tensor([0.2, 0.1]), cats, 0.5).tolist() == [0, 1]
    empty = batched_box_nms(torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0), 0.5)
    assert empty.shape == (0,)
    assert empty.dtype == torch.long


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("chunk", [7, 1024])
def test_nms_matches_naive(seed, chunk):
    rng = np.random.default_rng(seed)
    n = 150
    xy = rng.integers(0, 40, (n, 2))
    boxes = np.concatenate([xy, xy + rng.integers(0, 40, (n, 2))], axis=1).astype(np.float64)
    scores = rng.integers(0, 20, n) / 20  # many ties
    cats = rng.integers(0, 3, n)
    thr = float(rng.choice([0.3, 0.5, 0.7]))
    expected = naive_nms(boxes.tolist(), scores.tolist(), cats.tolist(), thr)
    assert 1 < len(expected) < n  # the sample exercises suppression
    keep = batched_box_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(cats), thr, chunk
    )
    assert keep.tolist() == expected


def test_nms_accepts_int_and_float32_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    scores, cats = torch.tensor([0.1, 0.9, 0.5]), torch.zeros(3, dtype=torch.long)
    assert batched_box_nms(boxes, scores, cats, 0.7).tolist() == [1, 2]
    assert batched_box_nms(boxes.float(), scores, cats, 0.7).tolist() == [1, 2]


# ---------------------------------------------------------------------------------------------
# RLE
# ---------------------------------------------------------------------------------------------


def naive_rle_counts(mask: np.ndarray) -> list[int]:
    counts, current, run = [], False, 0
    for v in mask.flatten(order="F"):
        if bool(v) == current:
            run += 1
        else:
            counts.append(run)
            current, run = bool(v), 1
    counts.append(run)
    return counts


def edge_case_masks() -> list[np.ndarray]:
    first_set = np.zeros((3, 4), dtype=bool)
    first_set[0, 0] = True
    checker = (np.indices((5, 3)).sum(axis=0) % 2).astype(bool)
    return [
        np.zeros((4, 6), dtype=bool),
        np.ones((4, 6), dtype=bool),
        first_set,
        np.zeros((1, 1), dtype=bool),
        np.ones((1, 1), dtype=bool),
        checker,
        ~checker,
        np.eye(7, 2, dtype=bool),
    ]


def random_rle_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(6)
    return [random_masks(rng, 5, 7, 11, p) for p in (0.1, 0.5, 0.9)]


def test_masks_to_rle_hand_computed():
    # Column-major: column 0 is (1, 0), column 1 is (1, 1) -> pixels 1, 0, 1, 1.
    mask = torch.tensor([[[True, True], [False, True]]])
    assert masks_to_rle(mask) == [{"size": [2, 2], "counts": [0, 1, 1, 2]}]
    # Rows matter: a 2x3 mask with only its last column set.
    mask = torch.tensor([[[False, False, True], [False, False, True]]])
    assert masks_to_rle(mask) == [{"size": [2, 3], "counts": [4, 2]}]


def test_masks_to_rle_matches_naive_and_pycocotools():
    masks = [m[None] for m in edge_case_masks()] + random_rle_masks()
    for batch in masks:
        h, w = batch.shape[1:]
        rles = masks_to_rle(torch.from_numpy(batch))
        assert len(rles) == len(batch)
        for rle, mask in zip(rles, batch):
            assert rle["size"] == [h, w]
            assert rle["counts"] == naive_rle_counts(mask)
            assert all(type(c) is int for c in rle["counts"])
            decoded = mask_utils.decode(mask_utils.frPyObjects(rle, h, w))
            np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_masks_to_rle_empty_batch():
    assert masks_to_rle(torch.zeros((0, 3, 4), dtype=torch.bool)) == []


def test_coco_encode_round_trip():
    masks = [m[None] for m in edge_case_masks()] + random_rle_masks()
    for batch in masks:
        for as_tensor in (False, True):
            rles = coco_encode(torch.from_numpy(batch) if as_tensor else batch)
            assert len(rles) == len(batch)
            for rle, mask in zip(rles, batch):
                assert isinstance(rle["counts"], str)
                assert rle["size"] == list(mask.shape)
                decoded = mask_utils.decode({**rle, "counts": rle["counts"].encode()})
                np.testing.assert_array_equal(decoded.astype(bool), mask)
                assert mask_utils.area({**rle, "counts": rle["counts"].encode()}) == mask.sum()
    assert coco_encode(np.zeros((0, 3, 4), dtype=bool)) == []


# ---------------------------------------------------------------------------------------------
# Small-region cleanup
# ---------------------------------------------------------------------------------------------


def flood_components(binary: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected components by BFS, in row-major order of their first pixel."""
    h, w = binary.shape
    seen = np.zeros_like(binary, dtype=bool)
    comps = []
    for y in range(h):
        for x in range(w):
            if not binary[y, x] or seen[y, x]:
                continue
            comp, queue = [], deque([(y, x)])
            seen[y, x] = True
            while queue:
                cy, cx = queue.popleft()
                comp.append((cy, cx))
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < h and 0 <= nx < w and binary[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
            comps.append(comp)
    return comps


def naive_remove_small_regions(mask: np.ndarray, thresh: float, mode: str):
    out = mask.copy()
    if mode == "holes":
        for comp in flood_components(~mask):
            if len(comp) < thresh:
                for p in comp:
                    out[p] = True
    else:
        comps = flood_components(mask)
        big = [c for c in comps if len(c) >= thresh]
        if not big and comps:
            big = [max(comps, key=len)]  # max returns the first of equal sizes
        out[:] = False
        for comp in big:
            for p in comp:
                out[p] = True
    # "touched": a small component existed, whether or not the mask changed.
    comps = flood_components(~mask if mode == "holes" else mask)
    return out, any(len(c) < thresh for c in comps)


def test_fill_hole_in_ring():
    mask = np.ones((6, 7), dtype=bool)
    mask[2:4, 2] = False
    mask[2, 3] = False  # a 3-pixel hole
    out, changed = remove_small_regions(mask, 4, "holes")
    assert changed
    assert out.all()
    # At the threshold the hole is not small and stays.
    out, changed = remove_small_regions(mask, 3, "holes")
    assert not changed
    np.testing.assert_array_equal(out, mask)


def test_holes_border_region_is_a_component_like_any_other():
    mask = np.zeros((5, 5), dtype=bool)
    mask[:, 2:] = True  # background is a 10-pixel strip on the left border
    out, changed = remove_small_regions(mask, 11, "holes")
    assert changed and out.all()
    out, changed = remove_small_regions(mask, 10, "holes")
    assert not changed and (out == mask).all()


def test_diagonal_islands_are_one_component():
    mask = np.zeros((6, 6), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # 3 pixels joined only diagonally
    mask[4, 5] = True  # a lone pixel
    out, changed = remove_small_regions(mask, 2, "islands")
    assert changed
    expected = mask.copy()
    expected[4, 5] = False
    np.testing.assert_array_equal(out, expected)


def test_all_small_islands_keep_the_largest():
    mask = np.zeros((7, 7), dtype=bool)
    mask[0, 0:2] = True  # 2 px
    mask[3:5, 3:5] = True  # 4 px
    mask[6, 6] = True  # 1 px
    out, changed = remove_small_regions(mask, 100, "islands")
    assert changed
    expected = np.zeros_like(mask)
    expected[3:5, 3:5] = True
    np.testing.assert_array_equal(out, expected)


def test_islands_tie_keeps_first_in_row_major_order():
    mask = np.zeros((5, 5), dtype=bool)
    mask[4, 0:2] = True
    mask[0, 3:5] = True  # same size, reached first in a row-major scan
    out, changed = remove_small_regions(mask, 10, "islands")
    assert changed
    expected = np.zeros_like(mask)
    expected[0, 3:5] = True
    np.testing.assert_array_equal(out, expected)


def test_lone_small_island_is_kept_but_reported_touched():
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1] = True
    out, changed = remove_small_regions(mask, 10, "islands")
    assert changed
    np.testing.assert_array_equal(out, mask)


def test_empty_and_full_masks():
    empty, full = np.zeros((4, 5), dtype=bool), np.ones((4, 5), dtype=bool)
    for mask, mode in [(empty, "islands"), (full, "holes"), (empty, "holes"), (full, "islands")]:
        out, changed = remove_small_regions(mask, 5, mode)
        assert not changed
        np.testing.assert_array_equal(out, mask)
    # The whole background is one component: below the threshold it is a hole and gets filled.
    out, changed = remove_small_regions(empty, 21, "holes")
    assert changed and out.all()
    # A full mask is one island: kept even when small, as the largest (but touched).
    out, changed = remove_small_regions(full, 21, "islands")
    assert changed and out.all()


def test_remove_small_regions_rejects_bad_mode():
    with pytest.raises(ValueError):
        remove_small_regions(np.zeros((2, 2), dtype=bool), 1, "specks")


@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_matches_flood_fill(mode):
    rng = np.random.default_rng(7)
    n_changed = 0
    for _ in range(60):
        h, w = rng.integers(1, 13, 2)
        mask = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        thresh = float(rng.choice([1, 2, 3, 4.5, 8, 20]))
        expected, expected_changed = naive_remove_small_regions(mask, thresh, mode)
        out, changed = remove_small_regions(mask, thresh, mode)
        assert out.dtype == bool
        np.testing.assert_array_equal(out, expected)
        assert changed == expected_changed
        n_changed += changed
    assert 10 < n_changed < 60  # both outcomes are exercised


def _odd_masks() -> torch.Tensor:
    """(6, 7, 5) masks: random, empty, full, one pixel in each corner region."""
    rng = np.random.default_rng(3)
    masks = np.zeros((6, 7, 5), dtype=bool)
    masks[0] = rng.random((7, 5)) > 0.5
    masks[2] = True
    masks[3, 0, 4] = True
    masks[4, 6, 0] = True
    masks[5, 2:5, 1:3] = True
    return torch.from_numpy(masks)


def test_column_major_encoding_equals_encoding_the_transpose():
    masks = _odd_masks()
    rles = coco_encode_column_major(masks.transpose(1, 2).contiguous())
    assert rles == coco_encode(masks)
    for rle, mask in zip(rles, masks):
        assert rle["size"] == [7, 5]
        assert np.array_equal(mask_utils.decode(rle).astype(bool), mask.numpy())
    assert coco_encode_column_major(torch.zeros((0, 5, 7), dtype=torch.bool)) == []


def test_areas_of_many_rles_at_once():
    # pycocotools' area() overflows on 256+ RLEs in one call: a decoder batch at
    # thresholds 0 with --points_per_batch 100 holds 300.
    masks = torch.zeros((300, 9, 11), dtype=torch.bool)
    for i in range(300):
        masks[i, : 1 + i % 9, : 1 + i % 11] = True
    areas = rle_areas(coco_encode(masks))
    assert areas.dtype == np.int64 and areas.tolist() == masks.sum(dim=(1, 2)).tolist()
    assert rle_areas([]).shape == (0,)
