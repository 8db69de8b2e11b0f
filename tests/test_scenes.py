"""Synthetic scenes: deterministic per seed, exact and consistent instance masks."""

import numpy as np
import pytest

from training.scenes import EVAL_SEED_START, generate_scene, make_scene

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
