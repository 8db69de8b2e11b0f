"""Automatic mask generator: parity with the reference's records, and behaviour."""

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from sam_core import build_sam
from sam_core.generator import AutomaticMaskGenerator
from sam_core.mask_ops import masks_to_boxes
from scripts.amg_match import match_records

from .conftest import FIXTURES

GOLDEN = json.loads((FIXTURES / "amg_golden.json").read_text())
CASE_IDS = [f"{c['name']}-image{c['image']}" for c in GOLDEN["cases"]]


@pytest.fixture(scope="module")
def images():
    with np.load(FIXTURES / "amg_images.npz") as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]


@pytest.fixture(scope="module")
def model():
    return build_sam(checkpoint=FIXTURES.parent.parent / GOLDEN["checkpoint"])


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=CASE_IDS)
def test_same_masks_as_reference(model, images, case):
    generator = AutomaticMaskGenerator(model, output_mode="coco_rle", **case["params"])
    ours = generator.generate(images[case["image"]])
    match = match_records(ours, case["records"], min_iou=0.99, score_tol=1e-3)
    assert match.identical, match
    # Everything else in the records too, for the matched masks.
    by_rle = {r["segmentation"]["counts"]: r for r in case["records"]}
    exact = [r for r in ours if r["segmentation"]["counts"] in by_rle]
    assert len(exact) >= 0.95 * len(ours)
    for r in exact:
        ref = by_rle[r["segmentation"]["counts"]]
        assert r["area"] == ref["area"]
        assert r["bbox"] == ref["bbox"]
        assert r["crop_box"] == ref["crop_box"]
        np.testing.assert_allclose(r["point_coords"], ref["point_coords"], atol=1e-6)


def test_parity_fixture_compares_distinct_masks():
    case = next(c for c in GOLDEN["cases"] if c["name"] == "grid_no_nms")
    rles = [r["segmentation"] for r in case["records"]]
    iou = mask_utils.iou(rles, rles, [0] * len(rles))
    off_diagonal = iou[~np.eye(len(rles), dtype=bool)]
    assert len(rles) >= 100
    assert np.median(off_diagonal) < 0.5  # masks really differ from prompt to prompt


@pytest.mark.parametrize("mode", ["binary_mask", "uncompressed_rle", "coco_rle"])
def test_records_are_consistent_in_every_output_mode(model, images, mode):
    # Over 255 masks: pycocotools' area() of a list overflows there under numpy 2.
    params = dict(
        points_per_side=12, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    records = AutomaticMaskGenerator(model, output_mode=mode, **params).generate(images[1])
    assert len(records) > 255
    h, w = images[1].shape[:2]
    for r in records:
        seg = r["segmentation"]
        if mode == "binary_mask":
            mask = seg
        elif mode == "uncompressed_rle":
            mask = mask_utils.decode(mask_utils.frPyObjects(seg, h, w)).astype(bool)
        else:
            assert isinstance(seg["counts"], str)
            mask = mask_utils.decode(seg).astype(bool)
        assert mask.shape == (h, w)
        assert r["area"] == int(mask.sum())
        x0, y0, x1, y1 = masks_to_boxes(torch.from_numpy(mask)).tolist()
        assert r["bbox"] == [x0, y0, x1 - x0, y1 - y0]
        assert r["crop_box"] == [0, 0, w, h]
        assert set(r) == {
            "segmentation",
            "area",
            "bbox",
            "predicted_iou",
            "point_coords",
            "stability_score",
            "crop_box",
        }


def test_batch_equals_one_image_at_a_time(model, images):
    params = next(c["params"] for c in GOLDEN["cases"] if c["name"] == "crops")
    generator = AutomaticMaskGenerator(
        model, output_mode="coco_rle", **params, encoder_batch_size=3
    )
    batched = generator.generate_batch(images)
    for image, records in zip(images, batched):
        assert match_records(records, generator.generate(image)).identical


def test_points_per_batch_does_not_change_the_masks(model, images):
    params = GOLDEN["cases"][0]["params"]
    a = AutomaticMaskGenerator(model, output_mode="coco_rle", points_per_batch=7, **params)
    b = AutomaticMaskGenerator(model, output_mode="coco_rle", points_per_batch=64, **params)
    assert match_records(a.generate(images[0]), b.generate(images[0])).identical


def test_strict_thresholds_keep_nothing_and_return_empty(model, images):
    generator = AutomaticMaskGenerator(model, points_per_side=4, pred_iou_thresh=100.0)
    assert generator.generate(images[0]) == []


def test_explicit_point_grids(model, images):
    grid = np.array([[0.25, 0.25], [0.75, 0.75]])
    generator = AutomaticMaskGenerator(
        model,
        points_per_side=None,
        point_grids=[grid],
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    )
    records = generator.generate(images[0])
    h, w = images[0].shape[:2]
    points = {tuple(r["point_coords"][0]) for r in records}
    assert points <= {(0.25 * w, 0.25 * h), (0.75 * w, 0.75 * h)}
    assert len(records) <= 6


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"points_per_side": None}, "exactly one of points_per_side and point_grids"),
        ({"point_grids": [np.zeros((1, 2))]}, "exactly one of points_per_side and point_grids"),
        (
            {"points_per_side": None, "point_grids": [np.zeros((1, 2))], "crop_n_layers": 1},
            "needs 2",
        ),
        ({"output_mode": "png"}, "output_mode must be one of"),
        ({"crop_n_layers": -1}, "crop_n_layers"),
        ({"points_per_batch": 0}, "points_per_batch"),
        ({"points_per_side": 0}, "points_per_side"),
        ({"crop_n_points_downscale_factor": 0}, "crop_n_points_downscale_factor must be >= 1"),
        ({"crop_overlap_ratio": 1.0}, r"crop_overlap_ratio must be in \[0, 1\)"),
        ({"min_mask_region_area": -1}, "min_mask_region_area must be >= 0"),
        ({"encoder_batch_size": 0}, "encoder_batch_size must be >= 1"),
        ({"precision": "fp16"}, "precision"),
    ],
)
def test_bad_parameters(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        AutomaticMaskGenerator(model, **kwargs)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((10, 10, 3), np.float32),
    ],
)
def test_bad_images(model, image):
    with pytest.raises(ValueError, match="uint8 RGB"):
        AutomaticMaskGenerator(model).generate(image)


# --- deferred encoding: only the NMS survivors are encoded ---------------------------------


def _same_records(a: list[dict], b: list[dict]) -> bool:
    """Records equal field by field, in order (NaN stability scores equal each other)."""

    def same(x, y):
        return x == y or (isinstance(x, float) and x != x and y != y)

    return len(a) == len(b) and all(same(r[k], s[k]) for r, s in zip(a, b) for k in r)


@pytest.mark.parametrize(
    "params",
    [
        dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0),
        dict(points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=-1.0),
        dict(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.3),
        dict(points_per_side=6, crop_n_layers=1, pred_iou_thresh=0.0, stability_score_thresh=0.0),
        dict(
            points_per_side=6,
            crop_n_layers=1,
            min_mask_region_area=40,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.2,
        ),
    ],
    ids=["thresholds-0", "iou-filter-only", "stability-filter", "crops", "crops-small-regions"],
)
def test_encoding_only_nms_survivors_gives_the_same_records(model, images, params, monkeypatch):
    """Only the masks the per-crop NMS keeps are binarised and encoded; the records are
    those of encoding every candidate right after its decoder batch."""
    import sam_core.generator as generator_module

    generator = AutomaticMaskGenerator(model, output_mode="coco_rle", **params)
    deferred = generator.generate_batch(images)
    # Some candidates must be suppressed, or deferring would skip nothing.
    assert sum(generator.prompts_decoded) * 3 > sum(len(r) for r in deferred) > 0

    encoded = []
    encode = generator_module.AutomaticMaskGenerator._encode_candidates
    monkeypatch.setattr(
        generator_module.AutomaticMaskGenerator,
        "_encode_candidates",
        lambda self, candidates, *args: (
            encoded.append(len(candidates)) or encode(self, candidates, *args)
        ),
    )
    deferred_again = generator.generate_batch(images)
    # A budget of one byte encodes the candidates held so far after every batch.
    monkeypatch.setattr(generator_module, "_PENDING_BUDGET_BYTES", 1)
    encoded_deferred, encoded[:] = sum(encoded), []
    eager = generator.generate_batch(images)
    generator.points_per_batch = 16
    small_batches = generator.generate_batch(images)
    assert sum(encoded) > encoded_deferred  # the eager runs did encode more
    for d, a, e, m in zip(deferred, deferred_again, eager, small_batches):
        assert _same_records(a, d)
        assert _same_records(d, e)
        assert _same_records(m, e)


# --- adaptive prompts (beyond the reference) ------------------------------------------------


@pytest.fixture(scope="module")
def bundled_scene():
    from pipeline.config import BUNDLED_CHECKPOINT
    from training.scenes import EVAL_SEED_START, generate_scene

    return build_sam(checkpoint=BUNDLED_CHECKPOINT), generate_scene(EVAL_SEED_START, (96, 128))


def test_exact_mode_counts_every_grid_point(bundled_scene):
    model, scene = bundled_scene
    generator = AutomaticMaskGenerator(model, points_per_side=8, crop_n_layers=1)
    generator.generate_batch([scene.image, scene.image[:50]])
    assert generator.prompts_decoded == [8 * 8 * 5, 8 * 8 * 5]  # whole image + 4 crops


def _grid_index(points: np.ndarray, side: int, size: tuple[int, int]) -> np.ndarray:
    """Row-major index in a side x side grid of (n, 2) xy grid points of an (h, w) image."""
    h, w = size
    col = np.rint(points[:, 0] / w * side - 0.5).astype(int)
    row = np.rint(points[:, 1] / h * side - 0.5).astype(int)
    return row * side + col


def test_adaptive_mode_grows_from_the_points_whose_masks_pass_the_filters(bundled_scene):
    model, scene = bundled_scene
    side, stride, radius = 16, 4, 1
    common = dict(points_per_side=side, pred_iou_thresh=0.2, stability_score_thresh=0.3)
    adaptive = AutomaticMaskGenerator(
        model,
        prompt_mode="adaptive",
        adaptive_stride=stride,
        adaptive_radius=radius,
        output_mode="coco_rle",
        **common,
    )
    records = adaptive.generate(scene.image)
    # Every filtered mask of every grid point (NMS at 1.0 drops nothing): which points
    # produce one, and the masks the adaptive mode may return.
    everything = AutomaticMaskGenerator(
        model, box_nms_thresh=1.0, output_mode="coco_rle", **common
    ).generate(scene.image)
    size = scene.image.shape[:2]
    producing = np.zeros((side, side), dtype=bool)
    producing.flat[
        _grid_index(np.array([r["point_coords"][0] for r in everything]), side, size)
    ] = True
    # The expected rounds, written out: the sub-grid, then the neighbourhoods of the
    # decoded producing points, until nothing new.
    decoded = np.zeros((side, side), dtype=bool)
    decoded[1::stride, 1::stride] = True
    while True:
        near = np.zeros_like(decoded)
        for row, col in zip(*np.nonzero(decoded & producing)):
            near[
                max(0, row - radius) : row + radius + 1, max(0, col - radius) : col + radius + 1
            ] = True
        if not (near & ~decoded).any():
            break
        decoded |= near
    assert (stride * stride) < decoded.sum() < side * side, "the test would check nothing"
    assert adaptive.prompts_decoded == [int(decoded.sum())]
    # Each returned mask is one the exact mode produces for the same, decoded point.
    assert records
    points = np.array([r["point_coords"][0] for r in records])
    assert decoded.flat[_grid_index(points, side, size)].all()
    candidates = {(r["segmentation"]["counts"], tuple(r["point_coords"][0])) for r in everything}
    for record in records:
        key = (record["segmentation"]["counts"], tuple(record["point_coords"][0]))
        assert key in candidates


def test_adaptive_rounds_share_the_crops_budget_of_unencoded_candidates(bundled_scene, monkeypatch):
    import sam_core.generator as generator_module

    model, scene = bundled_scene
    generator = AutomaticMaskGenerator(
        model,
        points_per_side=16,
        points_per_batch=16,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,  # candidates stay unencoded until the NMS
        prompt_mode="adaptive",
        output_mode="coco_rle",
    )
    unbounded = generator.generate(scene.image)
    side = model.config.low_res_mask_size
    # float32 logits of 50 candidates: a batch of 16 prompts has up to 48, the first
    # round (the 4 x 4 sub-grid) one batch, the second 15.
    budget = 50 * side * side * 4
    monkeypatch.setattr(generator_module, "_PENDING_BUDGET_BYTES", budget)
    held = []
    crop_nms = generator._crop_nms

    def spy(parts, *args):
        held.append(sum(generator_module._logit_bytes(p) for p in parts))
        return crop_nms(parts, *args)

    monkeypatch.setattr(generator, "_crop_nms", spy)
    assert _same_records(generator.generate(scene.image), unbounded)
    assert held[0] <= budget


def test_adaptive_mode_with_stride_1_is_the_exact_mode(bundled_scene):
    model, scene = bundled_scene
    common = dict(
        points_per_side=8, pred_iou_thresh=0.2, stability_score_thresh=0.3, output_mode="coco_rle"
    )
    adaptive = AutomaticMaskGenerator(model, prompt_mode="adaptive", adaptive_stride=1, **common)
    exact = AutomaticMaskGenerator(model, **common).generate(scene.image)
    assert exact and match_records(adaptive.generate(scene.image), exact).identical
    assert adaptive.prompts_decoded == [64]


def test_adaptive_mode_on_held_out_scenes_saves_prompts_and_finds_the_masks(bundled_scene):
    # benchmarks/adaptive_prompts.py in small: 3 held-out scenes at `make demo`'s thresholds.
    from training.scenes import EVAL_SEED_START, generate_scene

    model, _ = bundled_scene
    common = dict(pred_iou_thresh=0.5, stability_score_thresh=0.7, output_mode="coco_rle")
    exact = AutomaticMaskGenerator(model, **common)
    adaptive = AutomaticMaskGenerator(model, prompt_mode="adaptive", **common)
    prompts, matched, masks = {"exact": 0, "adaptive": 0}, 0, 0
    for seed in range(EVAL_SEED_START, EVAL_SEED_START + 3):
        image = generate_scene(seed, (256, 256)).image
        reference = exact.generate(image)
        match = match_records(adaptive.generate(image), reference, min_iou=0.9, score_tol=1.0)
        matched, masks = matched + match.n_matched, masks + len(reference)
        prompts["exact"] += exact.prompts_decoded[0]
        prompts["adaptive"] += adaptive.prompts_decoded[0]
    assert masks >= 30, "too few masks for the share to mean anything"
    assert prompts["exact"] == 3 * 32 * 32
    # Measured: 1.95x fewer prompts, 63 of 67 masks (the old rule, skipping grid points
    # inside kept coarse masks, decoded 1.05x fewer on the benchmark's 24 images).
    assert prompts["exact"] >= 1.6 * prompts["adaptive"]
    assert matched >= 0.85 * masks


def test_bad_prompt_modes_and_grids_are_refused(bundled_scene):
    model, _ = bundled_scene
    with pytest.raises(ValueError, match="prompt_mode must be one of"):
        AutomaticMaskGenerator(model, prompt_mode="sparse")
    with pytest.raises(ValueError, match="adaptive_stride must be >= 1"):
        AutomaticMaskGenerator(model, prompt_mode="adaptive", adaptive_stride=0)
    with pytest.raises(ValueError, match="adaptive_radius must be >= 0"):
        AutomaticMaskGenerator(model, prompt_mode="adaptive", adaptive_radius=-1)
    with pytest.raises(ValueError, match="adaptive' needs points_per_side"):
        AutomaticMaskGenerator(
            model, points_per_side=None, point_grids=[np.full((4, 2), 0.5)], prompt_mode="adaptive"
        )
    with pytest.raises(ValueError, match=r"points_per_side must be <= 1024.*GB"):
        AutomaticMaskGenerator(model, points_per_side=100_000)
