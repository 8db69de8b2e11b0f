"""Quality filtering and per-image deduplication of mined masks."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from transforms.postprocess import QualityThresholds, deduplicate_masks, filter_masks
from transforms.records import MinedImage


def record(box, iou=0.9, stability=0.97, size=(20, 30)):
    """A mask filling the XYXY (inclusive) box, as the generator's coco_rle record."""
    h, w = size
    mask = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0 : y1 + 1, x0 : x1 + 1] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    return {
        "segmentation": rle,
        "area": int(mask.sum()),
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "predicted_iou": iou,
        "stability_score": stability,
        "point_coords": [[x0, y0]],
        "crop_box": [0, 0, w, h],
    }


def image(masks, size=(20, 30)):
    return MinedImage("u", "s", size[1], size[0], masks, len(masks), 0.0, 0.0, "custom", "x")


def test_default_thresholds_keep_everything_even_negative_scores():
    masks = [record((0, 0, 5, 5), iou=-2.0, stability=0.1), record((3, 3, 9, 9))]
    assert filter_masks(image(masks), QualityThresholds()).masks == masks


def test_score_and_area_thresholds():
    small = record((0, 0, 1, 1))  # 4 px of 600
    big = record((0, 0, 29, 19))  # the whole image
    weak = record((5, 5, 15, 15), iou=0.5)
    unstable = record((5, 5, 15, 15), stability=0.8)
    good = record((5, 5, 15, 15))
    thresholds = QualityThresholds(
        min_predicted_iou=0.88,
        min_stability_score=0.95,
        min_area_fraction=0.01,
        max_area_fraction=0.95,
    )
    out = filter_masks(image([small, big, weak, unstable, good]), thresholds)
    assert out.masks == [good]
    assert out.masks_generated == 5  # the count before filtering is kept


def test_thresholds_are_inclusive():
    exact = record((5, 5, 15, 15), iou=0.88, stability=0.95)
    out = filter_masks(image([exact]), QualityThresholds(0.88, 0.95))
    assert out.masks == [exact]


def test_bad_area_fractions():
    with pytest.raises(ValueError, match="max_area_fraction"):
        QualityThresholds(min_area_fraction=0.5, max_area_fraction=0.2)


@pytest.mark.parametrize("by", ["box", "mask"])
def test_dedup_keeps_the_better_of_overlapping_masks(by):
    a = record((0, 0, 10, 10), iou=0.8)
    b = record((0, 0, 10, 9), iou=0.95)  # IoU with a: 110 / 121
    c = record((20, 10, 25, 15), iou=0.7)  # elsewhere
    out = deduplicate_masks(image([a, b, c]), iou_threshold=0.7, by=by)
    assert out.masks == [b, c]
    # Above the overlap, nothing is dropped.
    assert len(deduplicate_masks(image([a, b, c]), iou_threshold=0.95, by=by).masks) == 3


def test_box_and_mask_iou_differ_for_an_l_shape():
    # Same bounding box, little pixel overlap: box NMS drops one, mask NMS keeps both.
    full = record((0, 0, 10, 10), iou=0.9)
    thin = record((0, 0, 10, 10), iou=0.8)
    h, w = 20, 30
    mask = np.zeros((h, w), np.uint8)
    mask[0, 0:11] = 1
    mask[0:11, 0] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    thin.update(segmentation=rle, area=int(mask.sum()))
    assert len(deduplicate_masks(image([full, thin]), 0.7, by="box").masks) == 1
    assert len(deduplicate_masks(image([full, thin]), 0.7, by="mask").masks) == 2


def test_containment_dedup_drops_a_part_nested_in_a_better_whole_and_the_reverse():
    whole = record((0, 0, 19, 19), iou=0.9)  # 400 px
    part = record((2, 2, 7, 7), iou=0.8)  # 36 px, all inside whole: mask IoU only 0.09
    apart = record((22, 0, 29, 5), iou=0.7)  # touches nothing
    out = deduplicate_masks(image([whole, part, apart]), 0.7, by="containment")
    assert out.masks == [whole, apart]
    assert len(deduplicate_masks(image([whole, part, apart]), 0.7, by="mask").masks) == 3
    # A better-scored part keeps the part and drops its whole: one granularity either way.
    sharp = dict(part, predicted_iou=0.95)
    assert deduplicate_masks(image([whole, sharp]), 0.7, by="containment").masks == [sharp]
    # Half inside: kept below a threshold of 0.5, dropped above it.
    half = record((15, 0, 24, 3), iou=0.6)  # 40 px, 20 inside whole
    assert len(deduplicate_masks(image([whole, half]), 0.5, by="containment").masks) == 2
    assert len(deduplicate_masks(image([whole, half]), 0.49, by="containment").masks) == 1


def test_dedup_of_zero_or_one_mask_and_bad_mode():
    assert deduplicate_masks(image([]), 0.7).masks == []
    one = [record((1, 1, 4, 4))]
    assert deduplicate_masks(image(one), 0.7).masks == one
    with pytest.raises(ValueError, match="one of \\('box', 'mask', 'containment'\\)"):
        deduplicate_masks(image(one * 2), 0.7, by="pixels")


def test_empty_masks_and_non_finite_scores_never_pass():
    # At stability threshold 0 the generator keeps empty masks with a 0/0 = NaN score.
    good = record((0, 0, 3, 3))
    empty = dict(record((5, 5, 6, 6)), area=0)
    nan_stability = record((8, 8, 9, 9), stability=float("nan"))
    inf_iou = record((10, 2, 12, 4), iou=float("inf"))
    out = filter_masks(image([good, empty, nan_stability, inf_iou]), QualityThresholds())
    assert out.masks == [good]


def test_outputs_of_one_prompt_that_are_the_same_mask_are_kept_once():
    # Same RLE, crop box and point: the same mask_id; the first (best-scored) stays.
    first = record((0, 0, 4, 4), iou=0.9)
    same = dict(first, predicted_iou=0.8)
    other_point = dict(first, point_coords=[[1, 1]])
    out = filter_masks(image([first, same, other_point]), QualityThresholds())
    assert out.masks == [first, other_point]


def test_containment_dedup_runs_as_the_pipelines_transform_and_flag():
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.options import MaskMineOptions
    from transforms.postprocess import DeduplicateMasks

    assert MaskMineOptions(["--dedup_by=containment"]).dedup_by == "containment"
    whole, part = record((0, 0, 19, 19), iou=0.9), record((2, 2, 7, 7), iou=0.8)
    with TestPipeline() as p:
        kept = (
            p
            | beam.Create([image([whole, part])])
            | DeduplicateMasks(0.7, "containment")
            | beam.Map(lambda im: [m["area"] for m in im.masks])
        )
        assert_that(kept, equal_to([[400]]))
    with pytest.raises(ValueError, match="one of"):
        DeduplicateMasks(0.7, "pixels")
