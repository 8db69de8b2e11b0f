"""Synthetic scenes: deterministic per seed, exact and consistent instance masks."""

import numpy as np
import pytest

from training.quality import write_scenes
from training.scenes import EVAL_SEED_START, FILLS, SHAPES, generate_scene, make_scene
from training.shifted_scenes import SHIFTED_FILLS, SHIFTED_SHAPES, generate_shifted_scene

SEEDS = range(12)


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(seed) for seed in SEEDS]


def test_same_seed_same_scene_and_different_seeds_differ():
    image_a, masks_a = make_scene(3)
    image_b, masks_b = make_scene(np.random.default_rng(3))
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(masks_a, masks_b)
    image_c, _ = make_scene(4)
    assert not np.array_equal(image_a, image_c)


def test_shapes_and_dtypes():
    image, masks = make_scene(EVAL_SEED_START, size=(96, 160))
    assert image.shape == (96, 160, 3) and image.dtype == np.uint8
    assert masks.ndim == 3 and masks.shape[1:] == (96, 160) and masks.dtype == bool
    assert len(masks) >= 1


def test_scenes_have_several_objects_of_varied_kinds(scenes):
    counts = [len(s.masks) for s in scenes]
    assert min(counts) >= 1 and np.mean(counts) >= 3
    kinds = {k for s in scenes for k in s.kinds}
    assert {"disc", "ellipse", "polygon", "ring", "bar", "blob"} <= kinds
    assert any((s.parents >= 0).any() for s in scenes), "no scene has a part inside a whole"


def test_flat_objects_own_pixels_have_exactly_their_colour(scenes):
    checked = 0
    for scene in scenes:
        for k, fill in enumerate(scene.fills):
            if fill != "flat":
                continue
            own = scene.own_pixels(k)
            assert (scene.image[own] == scene.colours[k]).all()
            checked += 1
    assert checked > 10


def test_non_nested_masks_are_disjoint_and_parts_lie_inside_wholes(scenes):
    for scene in scenes:
        masks, parents = scene.masks, scene.parents
        for i in range(len(masks)):
            assert masks[i].sum() >= 16
            if parents[i] >= 0:
                whole = masks[parents[i]]
                assert not (masks[i] & ~whole).any()
                assert whole.sum() > masks[i].sum()
            for j in range(i + 1, len(masks)):
                if parents[i] == j or parents[j] == i:
                    continue
                assert not (masks[i] & masks[j]).any(), (i, j)


def test_mask_boundaries_follow_colour_edges(scenes):
    # Just outside a flat object, pixels differ from its colour (it has an edge).
    for scene in scenes[:4]:
        for k, fill in enumerate(scene.fills):
            if fill != "flat" or scene.parents[k] >= 0 or (scene.parents == k).any():
                continue
            mask = scene.masks[k]
            ring = np.zeros_like(mask)
            ring[1:] |= mask[:-1]
            ring[:-1] |= mask[1:]
            ring &= ~mask
            if ring.any():
                differs = (scene.image[ring] != scene.colours[k]).any(axis=1)
                assert differs.mean() > 0.95


@pytest.fixture(scope="module")
def shifted():
    return [generate_shifted_scene(EVAL_SEED_START + i) for i in range(12)]


def test_shifted_scenes_are_deterministic_and_unlike_the_trainers(shifted):
    again = generate_shifted_scene(EVAL_SEED_START)
    np.testing.assert_array_equal(again.image, shifted[0].image)
    np.testing.assert_array_equal(again.masks, shifted[0].masks)
    assert not np.array_equal(shifted[0].image, generate_shifted_scene(EVAL_SEED_START + 1).image)
    # Same seed, other generator: another scene, made of shapes and fills the trainer never draws.
    assert not np.array_equal(shifted[0].image, generate_scene(EVAL_SEED_START).image)
    kinds = {k for s in shifted for k in s.kinds}
    fills = {f for s in shifted for f in s.fills}
    assert kinds == set(SHIFTED_SHAPES) and not kinds & set(SHAPES)
    assert fills == set(SHIFTED_FILLS) and fills - {"flat"} and not (fills - {"flat"}) & set(FILLS)


def test_shifted_scene_masks_are_visible_disjoint_and_cover_small_and_large_objects(shifted):
    areas = []
    for scene in shifted:
        assert scene.image.shape == (256, 256, 3) and scene.image.dtype == np.uint8
        assert (scene.parents == -1).all()
        masks = scene.masks
        assert masks.sum(axis=0).max() <= 1, "visible parts overlap"
        areas += [int(m.sum()) for m in masks]
    assert min(areas) >= 16
    assert np.mean(np.array(areas) < 300) > 0.2 and max(areas) > 5000


def test_shifted_scenes_have_their_size_and_reject_unknown_generators(tmp_path):
    scene = generate_shifted_scene(EVAL_SEED_START, size=(96, 160))
    assert scene.image.shape == (96, 160, 3) and scene.masks.shape[1:] == (96, 160)
    with pytest.raises(ValueError, match="unknown scene generator 'nope'"):
        write_scenes(tmp_path, 1, generator="nope")
    truth = write_scenes(tmp_path, 2, (64, 64), generator="shifted")
    (name, (seed, masks)), *_ = truth.items()
    assert (tmp_path / name).exists() and seed == EVAL_SEED_START
    np.testing.assert_array_equal(masks, generate_shifted_scene(seed, (64, 64)).masks)
