"""Quality gate: the whole pipeline on held-out synthetic scenes, scored against exact ground
truth (benchmarks/quality.py on a few scenes).

The committed model must pass GATE; seeded random weights of the same config must fail it.
GATE and FLAGS come from what the committed model gives now (see the README of
sam_core/weights), with margin: raise them when the model improves. Measured on the 3 scenes
(26 objects) with FLAGS: committed model (three stages, 10,055 steps, IoU head calibrated)
recall@0.5 0.885, recall@0.75 0.538, mean best IoU 0.764, 100 masks per image (control,
against the next scene's objects: 0.0, 0.0, 0.052; before the calibration 0.760 and 99
masks); random weights 0.0, 0.0, 0.016, 1 mask per image. The
model before it (stage 2, 7,000 steps) gave 0.846, 0.500, 0.723 (it passes, narrowly: the
gate keeps two objects of margin for this one); the 1,650-step one 0.654, 0.308, 0.597 fails
it; earlier ones gave 0.731, 0.269, 0.598 (950 steps), 0.615, 0.231, 0.561 (750 steps) and
0.538, 0.308, 0.556 (600 steps); the first committed model (lr 2e-3, its encoder collapsed)
gave 0.115, 0.0, 0.315 and scored the same against the control.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from benchmarks.quality import main as quality_main
from benchmarks.quality import reliability_png, run_quality
from pipeline.config import BUNDLED_CHECKPOINT
from training.quality import (
    AREA_EDGES,
    SceneScore,
    by_area,
    calibration,
    random_checkpoint,
    score,
    summary,
    threshold_sweep,
    write_scenes,
)
from training.scenes import EVAL_SEED_START
from training.shifted_scenes import generate_shifted_scene

SCENES = 3
# At the reference thresholds (0.88 / 0.95) the committed model keeps masks on few scenes
# (its stability scores mostly stay below 0.95): gate on what the model ranks, not on its
# own scores.
FLAGS = ["--points_per_side=8", "--pred_iou_thresh=0", "--stability_score_thresh=0"]
GATE = {"mean_best_iou": 0.72, "recall@0.5": 0.8, "recall@0.75": 0.45}


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


def _perfect(tmp_path: Path) -> tuple[dict, dict]:
    truth = write_scenes(tmp_path, 3, (64, 64))
    pred = {
        name: [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks]
        for name, (_, masks) in truth.items()
    }
    return truth, pred


def test_calibration_is_predicted_against_the_best_matching_objects_iou(tmp_path: Path):
    truth, pred = _perfect(tmp_path)
    # Each scene's exact masks plus a 2x2 corner mask: its actual IoU is near 0 (it
    # overlaps an object by at most 4 px).
    corner = np.zeros((64, 64), np.uint8)
    corner[:2, :2] = 1
    pred = {n: [*r, mask_utils.encode(np.asfortranarray(corner))] for n, r in pred.items()}
    predicted = {n: [0.9] * (len(r) - 1) + [0.35] for n, r in pred.items()}
    scores = score(pred, truth, predicted=predicted)
    actual = np.concatenate([s.actual for s in scores])
    exact = np.concatenate([s.actual[:-1] for s in scores])
    np.testing.assert_allclose(exact, 1.0)
    assert (np.concatenate([s.actual[-1:] for s in scores]) < 0.05).all()
    cal = calibration(scores)
    n = len(actual)
    expected = (
        np.abs(0.9 - exact).sum()
        + np.abs(0.35 - actual[np.cumsum([len(s.actual) for s in scores]) - 1]).sum()
    ) / n
    assert cal["masks"] == n and cal["mean_abs_error"] == pytest.approx(expected)
    assert cal["matched@0.75"] == pytest.approx(len(exact) / n)
    assert cal["scenes_with_masks"] == 3
    # Bins: the 0.9 masks in [0.9, 1.0] with actual 1, the 0.35 ones in [0.3, 0.4).
    assert cal["bin_count"][9] == len(exact) and cal["bin_count"][3] == 3
    assert cal["bin_actual"][9] == pytest.approx(1.0) and cal["bin_predicted"][3] == pytest.approx(
        0.35
    )
    assert cal["bin_count"].sum() == n and np.isnan(cal["bin_actual"][0])


def test_calibration_needs_the_predicted_ious(tmp_path: Path):
    truth, pred = _perfect(tmp_path)
    with pytest.raises(ValueError, match="predicted IoUs"):
        calibration(score(pred, truth))
    wrong = {n: [0.5] for n in pred}
    with pytest.raises(ValueError, match="predicted IoUs for"):
        score(pred, truth, predicted=wrong)


def test_the_reliability_plot_is_a_png_with_the_models_curve(tmp_path: Path):
    truth, pred = _perfect(tmp_path)
    predicted = {n: [0.5] * len(r) for n, r in pred.items()}
    png = reliability_png(calibration(score(pred, truth, predicted=predicted)), "t")
    picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    red = np.array([0xC4, 0x4E, 0x52])  # the model's curve
    assert (np.abs(picture - red).max(axis=2) <= 2).sum() > 20


def test_the_benchmark_prints_calibration_and_writes_the_plot(tmp_path, capsys):
    path = tmp_path / "rel.png"
    args = ["--scenes=2", "--size=64", f"--reliability_png={path}", *FLAGS]
    assert quality_main(args) == 0
    out = capsys.readouterr().out
    assert "calibration over " in out and "mean |predicted IoU - actual IoU" in out
    assert "objects of 0-300 px" in out  # figures by size, as before
    assert "threshold sweep over the kept masks" in out and "0.88      0.95" in out
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_committed_models_calibration_is_reported(committed):
    cal = calibration(committed[0])
    assert cal["masks"] == sum(s.masks for s in committed[0]) > 0
    assert 0.0 <= cal["mean_abs_error"] <= 1.0 and 0.0 <= cal["matched@0.75"] <= 1.0


def test_the_benchmark_mines_the_shifted_generators_scenes(tmp_path, capsys):
    workdir = tmp_path / "work"
    args = ["--scenes=2", "--size=64", "--generator=shifted", f"--workdir={workdir}", *FLAGS]
    assert quality_main([*args, f"--reliability_png={tmp_path / 'rel.png'}"]) == 0
    assert "held-out shifted scenes" in capsys.readouterr().out
    written = np.asarray(Image.open(workdir / "scenes" / f"scene_{EVAL_SEED_START}.png"))
    np.testing.assert_array_equal(written, generate_shifted_scene(EVAL_SEED_START, (64, 64)).image)


def test_the_threshold_sweep_keeps_by_the_generators_rules(tmp_path: Path):
    truth = write_scenes(tmp_path, 1, (32, 32))
    (name, (_, gt)), *_ = truth.items()
    exact = mask_utils.encode(np.asfortranarray(gt[0].astype(np.uint8)))
    corner = np.zeros((32, 32), np.uint8)
    corner[:2, :2] = 1
    wrong = mask_utils.encode(np.asfortranarray(corner))
    pred = {name: [exact, wrong]}
    # exact mask: predicted 0.9, stability 0.95; wrong one: predicted 0.88, stability 0.99.
    scores = score(pred, truth, predicted={name: [0.9, 0.88]}, stability={name: [0.95, 0.99]})
    rows = {
        (r["pred_iou_thresh"], r["stability_score_thresh"]): r
        for r in threshold_sweep(scores, (0.0, 0.88), (0.0, 0.95, 0.96))
    }
    assert rows[0.0, 0.0]["masks_per_image"] == 2 and rows[0.0, 0.0]["matched@0.75"] == 0.5
    # predicted IoU is kept strictly above its threshold, stability at or above its own
    assert rows[0.88, 0.95]["masks_per_image"] == 1 and rows[0.88, 0.95]["matched@0.75"] == 1.0
    assert rows[0.88, 0.95]["recall@0.75"] == 1 / len(gt)
    assert rows[0.88, 0.95]["mean_abs_error"] == pytest.approx(0.1)
    only_wrong = rows[0.0, 0.96]
    assert only_wrong["masks_per_image"] == 1 and only_wrong["matched@0.75"] == 0.0
    assert only_wrong["recall@0.75"] == 0.0
    none = rows[0.88, 0.96]
    assert none["masks_per_image"] == 0 and none["scenes_with_masks"] == 0
    assert np.isnan(none["matched@0.75"]) and none["recall@0.75"] == 0.0
    with pytest.raises(ValueError, match="sweep needs predicted IoUs and stability"):
        threshold_sweep(score(pred, truth, predicted={name: [0.9, 0.88]}))
