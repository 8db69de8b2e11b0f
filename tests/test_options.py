"""Command-line options: flags, defaults, generator parameters."""

import json

import pytest

from pipeline.options import GENERATOR_PARAMS, MaskMineOptions, generator_params_json


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], False),
        (["--skip_existing"], True),
        (["--skip_existing=true"], True),
        (["--skip_existing=false"], False),
        (["--skip_existing=0"], False),
    ],
)
def test_flags_accept_no_value_or_an_explicit_one(argv, expected):
    # Flex templates pass every parameter as --name=value.
    assert MaskMineOptions(argv).skip_existing is expected


def test_bad_flag_value_is_rejected():
    with pytest.raises(SystemExit):
        MaskMineOptions(["--embeddings=maybe"]).get_all_options()


def test_generator_defaults_are_the_references():
    params = json.loads(generator_params_json(MaskMineOptions([])))
    assert params == {
        "points_per_side": 32,
        "points_per_batch": 64,
        "pred_iou_thresh": 0.88,
        "stability_score_thresh": 0.95,
        "stability_score_offset": 1.0,
        "box_nms_thresh": 0.7,
        "crop_n_layers": 0,
        "crop_nms_thresh": 0.7,
        "crop_overlap_ratio": 512 / 1500,
        "crop_n_points_downscale_factor": 1,
        "min_mask_region_area": 0,
        "precision": "fp32",
    }
    assert set(params) - {"precision"} == set(GENERATOR_PARAMS)


def test_generator_flags_are_typed():
    options = MaskMineOptions(["--points_per_side=16", "--pred_iou_thresh=0.5"])
    params = json.loads(generator_params_json(options))
    assert params["points_per_side"] == 16 and params["pred_iou_thresh"] == 0.5
