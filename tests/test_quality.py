"""Quality gate: the whole pipeline on held-out synthetic scenes, scored against exact ground
truth (benchmarks/quality.py on a few scenes).

The committed model must pass GATE; seeded random weights of the same config must fail it.
GATE and FLAGS come from what the committed model gives now (see the README of
sam_core/weights), with margin: raise them when the model improves. Measured on the 3 scenes
with FLAGS: committed model (patch size 8, 4 images per step, 1,650 steps) recall@0.5 0.654,
recall@0.75 0.308, mean best IoU 0.597, 127 masks per image (control, against the next scene's
objects: 0.0, 0.0, 0.068); random weights 0.0, 0.0, 0.016, 1 mask per image. The models before
it gave 0.731, 0.269, 0.598 (8 images per step, 950 steps), 0.615, 0.231, 0.561 (750 steps)
and 0.538, 0.308, 0.556 (600 steps) here; on 20 scenes each has a higher recall@0.75 and
mean best IoU than the one before (training/README.md). The patch-16 model before that
gave 0.538, 0.154, 0.520 and fails the recall@0.75 bound; the first committed model (lr 2e-3,
its encoder collapsed) gave 0.115, 0.0, 0.315 and scored the same against the control.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from benchmarks.quality import run_quality
from pipeline.config import BUNDLED_CHECKPOINT
from training.quality import (
    AREA_EDGES,
    SceneScore,
    by_area,
    random_checkpoint,
    score,
    summary,
    write_scenes,
)
from training.scenes import EVAL_SEED_START

SCENES = 3
# The committed model's predicted IoUs stay below the reference threshold 0.88 and its
# stability is low, so the reference thresholds keep no mask: gate on what the model ranks,
# not on its own scores.
FLAGS = ["--points_per_side=8", "--pred_iou_thresh=0", "--stability_score_thresh=0"]
GATE = {"mean_best_iou": 0.5, "recall@0.5": 0.55, "recall@0.75": 0.2}


def passes(figures: dict[str, float]) -> bool:
    return all(figures[key] >= bound for key, bound in GATE.items())


@pytest.fixture(scope="module")
def committed() -> tuple[list[SceneScore], list[SceneScore]]:
    return run_quality(SCENES, str(BUNDLED_CHECKPOINT), FLAGS)


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory) -> tuple[list[SceneScore], list[SceneScore]]:
    checkpoint = random_checkpoint(tmp_path_factory.mktemp("random") / "random.pth")
    return run_quality(SCENES, str(checkpoint), FLAGS)


def test_the_committed_model_passes_the_gate(committed):
    scores, _ = committed
    figures = summary(scores)
    assert [s.seed for s in scores] == [EVAL_SEED_START + i for i in range(SCENES)]
    assert figures["gt_objects"] >= 3 * SCENES
    assert passes(figures), figures


def test_random_weights_fail_the_gate(random_weights):
    figures = summary(random_weights[0])
    assert not passes(figures), figures


def test_the_masks_follow_the_image(committed):
    # Against another scene's objects the masks must score clearly lower (measured 0.597
    # against 0.068; the first committed model scored the same on both).
    scores, control = committed
    assert summary(scores)["mean_best_iou"] >= summary(control)["mean_best_iou"] + 0.1


def test_scoring_gives_perfect_masks_full_marks_and_the_control_less(tmp_path: Path):
    truth = write_scenes(tmp_path, 3, (64, 64))
    pred = {
        name: [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
        for name, (_, masks) in truth.items()
    }
    figures = summary(score(pred, truth))
    assert figures["recall@0.75"] == figures["mean_best_iou"] == 1.0
    assert figures["masks_per_image"] == np.mean([len(m) for m in pred.values()])
    assert summary(score(pred, truth, control=True))["mean_best_iou"] < 0.8
    nothing = {name: masks[:0] for name, masks in pred.items()}
    assert summary(score(nothing, truth))["recall@0.5"] == 0.0


def test_training_seeds_are_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="training seed"):
        write_scenes(tmp_path, 1, seed_start=EVAL_SEED_START - 1)


def test_area_buckets_partition_the_objects():
    scores = [
        SceneScore("a", 0, np.array([1.0, 0.6, 0.0]), 5, np.array([10, 300, 5000])),
        SceneScore("b", 1, np.array([0.8]), 2, np.array([299])),
    ]
    buckets = by_area(scores)
    assert [label for label, _ in buckets] == [
        "0-300 px",
        "300-1000 px",
        "1000-3000 px",
        ">= 3000 px",
    ]
    assert len(buckets) == len(AREA_EDGES) + 1
    counts = [m["gt_objects"] for _, m in buckets]
    assert counts == [2, 1, 0, 1]
    small, medium, empty, large = (m for _, m in buckets)
    assert small["mean_best_iou"] == pytest.approx(0.9) and small["recall@0.75"] == 1.0
    assert medium["recall@0.5"] == 1.0 and medium["recall@0.75"] == 0.0
    assert empty["recall@0.5"] == 0.0 and large["mean_best_iou"] == 0.0
