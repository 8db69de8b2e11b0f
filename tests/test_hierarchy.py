"""The containment hierarchy of an image's masks (transforms/hierarchy.py, masks.parent_mask_id
and masks.depth)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from transforms.hierarchy import containment, parents
from transforms.records import MinedImage, Provenance
from transforms.rows import mask_rows

H, W = 120, 160


def rle(mask: np.ndarray) -> dict:
    out = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(out["size"]), "counts": out["counts"].decode()}


def nested_scene() -> dict[str, np.ndarray]:
    """A ring inside a disc inside a square, the ring's hole, and things that are not nested."""
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot(yy - 50, xx - 60)
    square = (yy >= 10) & (yy < 90) & (xx >= 20) & (xx < 100)
    disc = r < 35
    ring = (r >= 15) & (r < 30)
    hole = r < 15
    # A little disc inside the hole with 3 stray pixels outside it (2 outside the disc too).
    leaky = (r < 8) | ((yy == 50) & (xx >= 94) & (xx < 97))
    # Half in the square, half out: at the top.
    straddle = (yy >= 40) & (yy < 60) & (xx >= 90) & (xx < 110)
    apart = (yy >= 100) & (xx >= 130)
    return {
        "square": square,
        "disc": disc,
        "ring": ring,
        "hole": hole,
        "leaky": leaky,
        "straddle": straddle,
        "apart": apart,
    }


def test_ring_in_disc_in_square_gets_its_parents_and_depths():
    masks = nested_scene()
    inside = (masks["leaky"] & masks["hole"]).sum()
    assert 0.9 <= inside / masks["leaky"].sum() < 1.0  # held enough, not wholly
    names = list(masks)
    parent, depth = parents([rle(masks[n]) for n in names], names)
    got = dict(zip(names, zip(parent, depth)))
    assert got == {
        "square": (None, 0),
        "disc": ("square", 1),
        "ring": ("disc", 2),
        # The hole lies in the disc, not in the ring around it.
        "hole": ("disc", 2),
        # The smallest container that holds >= 90%: the hole, not the disc around it.
        "leaky": ("hole", 3),
        "straddle": (None, 0),
        "apart": (None, 0),
    }


def test_threshold_decides_and_the_input_order_does_not():
    masks = nested_scene()
    names = list(masks)
    strict, _ = parents([rle(masks[n]) for n in names], names, threshold=1.0)
    assert dict(zip(names, strict))["leaky"] == "square"  # the only mask wholly around it
    assert dict(zip(names, strict))["ring"] == "disc"
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    again, depths = parents([rle(masks[n]) for n in shuffled], shuffled)
    first, first_depths = parents([rle(masks[n]) for n in names], names)
    assert dict(zip(shuffled, zip(again, depths))) == dict(zip(names, zip(first, first_depths)))


def test_equal_masks_are_not_each_others_parent_and_ties_go_to_the_smaller_id():
    square = np.zeros((H, W), bool)
    square[10:50, 10:50] = True
    small = np.zeros((H, W), bool)
    small[20:30, 20:30] = True
    segs = [rle(square), rle(square), rle(small)]
    parent, depth = parents(segs, ["b", "a", "c"])
    assert parent == [None, None, "a"] and depth == [0, 0, 1]


def test_containment_is_intersection_over_the_first_masks_area():
    a = np.zeros((H, W), bool)
    a[0:10, 0:10] = True  # 100 px
    b = np.zeros((H, W), bool)
    b[5:10, 0:20] = True  # 100 px, 50 of them in a
    c = np.zeros((H, W), bool)
    c[0:2, 0:5] = True  # 10 px, all in a
    held = containment([rle(a), rle(b), rle(c)], [rle(a), rle(b)])
    np.testing.assert_allclose(held, [[1.0, 0.5], [0.5, 1.0], [1.0, 0.0]])
    assert containment([], [rle(a)]).shape == (0, 1)


def test_bad_input_is_refused():
    one = rle(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="2 segmentations but 1 ids"):
        parents([one, one], ["a"])
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        parents([one], ["a"], threshold=0.0)
    with pytest.raises(ValueError, match="same size"):
        parents([one, rle(np.ones((5, 4), bool))], ["a", "b"])
    assert parents([], []) == ([], [])


def test_mask_rows_carry_the_hierarchy():
    masks = nested_scene()
    records = [
        {
            "segmentation": rle(masks[n]),
            "bbox": [0.0, 0.0, 1.0, 1.0],
            "area": int(masks[n].sum()),
            "predicted_iou": 0.9,
            "stability_score": 0.95,
            "point_coords": [[float(k), 1.0]],
            "crop_box": [0, 0, W, H],
        }
        for k, n in enumerate(["square", "disc", "ring"])
    ]
    image = MinedImage("u.png", "ab" * 32, W, H, records, 3, 0.0, 0.0, "custom", "cd" * 32)
    import datetime as dt

    from schemas import tables

    provenance = Provenance("r", "{}", "0.1.0", dt.datetime.now(dt.timezone.utc))
    rows = mask_rows(image, provenance)
    by_id = {r["mask_id"]: r for r in rows}
    square, disc, ring = rows
    assert (square["parent_mask_id"], square["depth"]) == (None, 0)
    assert (disc["parent_mask_id"], disc["depth"]) == (square["mask_id"], 1)
    assert (ring["parent_mask_id"], ring["depth"]) == (disc["mask_id"], 2)
    assert set(by_id) == {r["mask_id"] for r in rows}
    table = tables.to_table(rows, tables.MASKS_SCHEMA)  # null parent is valid, None depth not
    assert table.column("parent_mask_id").null_count == 1
    with pytest.raises(ValueError, match="'depth': must not be None"):
        tables.to_table([dict(square, depth=None)], tables.MASKS_SCHEMA)


_MANY = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from pycocotools import mask as mask_utils
    from transforms.hierarchy import parents

    n, side = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0)
    # Rectangles and polygons (discs) straight to RLE: no full-size array per mask, so the
    # peak below is the hierarchy's own.
    segs = []
    for k in range(n):
        cx, cy = rng.uniform(0, side, 2)
        r = side * rng.uniform(0.005, 0.3)
        if k % 2:
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            poly = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1).ravel().tolist()
            out = mask_utils.merge(mask_utils.frPyObjects([poly], side, side))
        else:
            box = np.array([[cx - r, cy - r, 2 * r, 1.5 * r]])
            out = mask_utils.frPyObjects(box, side, side)[0]
        segs.append({"size": [side, side], "counts": out["counts"].decode()})
    def status_mb(key):
        # VmHWM, not ru_maxrss: ru_maxrss keeps the forking parent's (pytest's) size.
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(key + ":"))
        return int(line.split()[1]) / 1024
    before = status_mb("VmRSS")
    start = time.perf_counter()
    parent, depth = parents(segs, [f"m{k:05d}" for k in range(n)])
    seconds = time.perf_counter() - start
    peak = status_mb("VmHWM")
    print(json.dumps({"masks": n, "side": side, "seconds": seconds, "rss_before_mb": before,
                      "peak_mb": peak, "growth_mb": peak - before,
                      "with_parent": sum(p is not None for p in parent), "max_depth": max(depth)}))
    """
)


def test_two_thousand_masks_of_one_image_stay_under_200_mb():
    # A fresh process: its peak RSS is then the hierarchy's, not the test session's.
    out = subprocess.run(
        [sys.executable, "-c", _MANY, "2000", "1500"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout)
    print("hierarchy of 2,000 masks (1500x1500):", figures)
    assert figures["with_parent"] > 100 and figures["max_depth"] >= 2  # a real hierarchy
    assert figures["growth_mb"] < 200
