"""IoU-head calibration: the least-squares refit and the kept-mask samples it fits on."""

from pathlib import Path

import numpy as np
import torch

from sam_core import build_sam
from training.calibrate import CALIBRATION_SEED_START, kept_mask_samples, refit_last_layer
from training.scenes import EVAL_SEED_START, generate_scene
from training.train import SYNTHETIC_CONFIG

WEIGHTS = Path(__file__).parent.parent / "sam_core" / "weights" / "sam_synthetic.pth"


def test_calibration_scenes_are_training_scenes():
    assert CALIBRATION_SEED_START + 1000 <= EVAL_SEED_START


def test_refit_recovers_a_linear_target_per_output_and_keeps_row_zero():
    torch.manual_seed(0)
    model = build_sam(SYNTHETIC_CONFIG)
    layer = model.mask_decoder.iou_prediction_head.layers[-1]
    before = layer.weight.detach().clone(), layer.bias.detach().clone()
    rng = np.random.default_rng(0)
    n, dim = 3000, layer.in_features
    features = np.maximum(rng.normal(size=(n, dim)), 0.0)  # after a ReLU
    outputs = rng.integers(1, 4, size=n)
    true_w = rng.normal(scale=0.05, size=(4, dim))
    true_b = np.array([0.0, 0.1, 0.3, 0.5])
    actual = (features * true_w[outputs]).sum(1) + true_b[outputs]
    refit_last_layer(model, features, outputs, actual, ridge=1e-9)
    fitted = layer(torch.from_numpy(features).float()).detach().numpy()
    got = fitted[np.arange(n), outputs]
    assert np.abs(got - actual).max() < 1e-3
    assert torch.equal(layer.weight[0], before[0][0])
    assert layer.bias[0] == before[1][0]
    assert not torch.equal(layer.weight[1:], before[0][1:])


def test_kept_mask_samples_line_up_with_the_head_and_the_masks():
    model = build_sam(checkpoint=WEIGHTS)
    layer = model.mask_decoder.iou_prediction_head.layers[-1]
    scenes = [generate_scene(CALIBRATION_SEED_START, (128, 128))]
    features, outputs, predicted, actual = kept_mask_samples(
        model, scenes, points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    assert len(actual) > 3
    assert len(features) == len(outputs) == len(predicted) == len(actual)
    assert set(outputs.tolist()) <= {1, 2, 3}
    # Each sample's features give back, through the last layer, its mask's score.
    scores = layer(torch.from_numpy(features).float()).detach().numpy()
    np.testing.assert_allclose(scores[np.arange(len(outputs)), outputs], predicted, atol=1e-5)
    assert ((actual >= 0.0) & (actual <= 1.0)).all()
    assert actual.max() > 0.5  # the bundled model finds some of the scene's objects
