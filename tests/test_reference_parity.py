"""Our model against outputs the reference package computed on the same weights."""

import numpy as np
import pytest
import torch

from sam_core import SamConfig, SamPredictor, build_sam

TOL = 1e-4


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return SamPredictor(build_sam(checkpoint=tiny_checkpoint))


def test_fixture_config_is_inferred_from_shapes(tiny_checkpoint, golden):
    model = build_sam(checkpoint=tiny_checkpoint)
    expected = SamConfig(
        **{
            **golden["config"],
            "encoder_global_attn_indexes": tuple(golden["config"]["encoder_global_attn_indexes"]),
        }
    )
    assert model.config == expected
    assert model.model_type == "custom"


def test_image_embeddings_match_reference(predictor, golden):
    images = [im.numpy() for im in golden["images"]]
    # Both images in one encoder call, although their sizes differ.
    embeddings = predictor.encode(images)
    for emb, ref, im in zip(embeddings, golden["features"], images):
        assert emb.original_size == im.shape[:2]
        torch.testing.assert_close(emb.features, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize(
    "name", ["points_multimask", "points_single", "boxes", "box_and_point", "mask_input"]
)
def test_masks_and_iou_match_reference(predictor, golden, name):
    embeddings = predictor.encode([im.numpy() for im in golden["images"]])
    cases = [c for c in golden["cases"] if c["name"] == name]
    assert len(cases) == len(embeddings)
    for case in cases:
        pred = predictor.predict(
            embeddings[case["image"]],
            case.get("point_coords"),
            case.get("point_labels"),
            case.get("boxes"),
            case.get("mask_inputs"),
            multimask_output=case["multimask"],
            return_logits=True,
            batch_size=2,  # several decoder batches per case
        )
        torch.testing.assert_close(pred.low_res_logits, case["low_res"], atol=TOL, rtol=0)
        torch.testing.assert_close(pred.masks, case["masks"], atol=TOL, rtol=0)
        torch.testing.assert_close(pred.iou_predictions, case["iou"], atol=TOL, rtol=0)


def test_binary_masks_are_thresholded_logits(predictor, golden):
    case = next(c for c in golden["cases"] if c["name"] == "points_multimask")
    emb = predictor.encode([golden["images"][case["image"]].numpy()])[0]
    pred = predictor.predict(emb, case["point_coords"], case["point_labels"])
    assert pred.masks.dtype == torch.bool
    confident = case["masks"].abs() > 1e-3  # away from the threshold
    assert torch.equal(pred.masks[confident], (case["masks"] > 0)[confident])


def test_outputs_are_not_degenerate(golden):
    # The fixture must discriminate: masks differ between prompts and across the image.
    case = next(c for c in golden["cases"] if c["name"] == "points_multimask")
    masks = case["masks"]
    assert masks.std() > 0.5
    assert not torch.allclose(masks[0], masks[1], atol=1e-2)
    assert np.unique(case["iou"].numpy().round(3)).size > 1
