"""`maskmine inspect`: overlay PNGs, the summary PNG and the HTML page of a real run.

One pipeline run (tiny fixture model) over generated images, an EXIF-rotated JPEG and a
broken file is shared by the module; inspect writes into a module folder once.
"""

from __future__ import annotations

import html.parser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from exports import render
from exports.dataset import RunImage
from exports.inspect import overlay_name, source_pixels
from pipeline.cli import main
from transforms.decode import decode_image_bytes

from .conftest import FIXTURES
from .helpers import FAST, read_table, scene


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inspect")
    images = root / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(scene(20 + i)).save(images / f"img_{i}.png")
    rotated = Image.fromarray(scene(4, size=(40, 90)))  # stored 90 wide, 40 high
    exif = rotated.getexif()
    exif[0x0112] = 6  # displayed rotated: 40 wide, 90 high
    rotated.save(images / "rotated.jpg", exif=exif)
    (images / "broken.png").write_bytes(b"not a png")
    output = root / "out"
    args = [
        "--runner=DirectRunner",
        f"--input={images}",
        f"--output={output}",
        f"--checkpoint={FIXTURES / 'sam_tiny.pth'}",
        *FAST,
    ]
    assert main(args) == 0
    dest = root / "pictures"
    assert main(["inspect", str(output), "--out", str(dest), "--top_k", "0"]) == 0
    extras = root / "extras"
    assert (
        main(["inspect", str(output), "--out", str(extras), "--top-k=0", "--boxes", "--points"])
        == 0
    )
    return {"output": output, "dest": dest, "extras": extras, "images": images}


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def mined(run: dict) -> list[tuple[dict, list[dict]]]:
    """(images row, its masks rows) in URI order, as inspect numbers the overlays."""
    masks = read_table(run["output"], "masks").to_pylist()
    rows = sorted(read_table(run["output"], "images").to_pylist(), key=lambda r: r["image_uri"])
    return [(r, [m for m in masks if m["image_uri"] == r["image_uri"]]) for r in rows]


def test_inspect_writes_one_overlay_per_image_a_summary_and_a_page(run):
    dest = run["dest"]
    names = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    expected = [overlay_name(i, row["image_uri"]) for i, (row, _) in enumerate(mined(run))]
    assert names == sorted(["index.html", "summary.png", *expected])
    assert len(expected) == 3  # two PNGs and the rotated JPEG; the broken file is an error


def decoded_masks(masks: list[dict]) -> np.ndarray:
    return np.stack([mask_utils.decode(m["segmentation"]).astype(bool) for m in masks])


def source_at_scale(row: dict) -> tuple[np.ndarray, int]:
    """The mined pixels blown up to the overlay's size (int16), and the scale."""
    s = int(render.overlay_scale(row["image_height"], row["image_width"]))
    source = decode_image_bytes(Path(row["image_uri"]).read_bytes()).astype(np.int16)
    return source.repeat(s, axis=0).repeat(s, axis=1), s


def test_overlays_have_the_image_size_and_change_exactly_the_mask_pixels(run):
    for i, (row, masks) in enumerate(mined(run)):
        h, w = row["image_height"], row["image_width"]
        scale = render.overlay_scale(h, w)
        assert scale == int(scale) >= 2, "test images are small: drawn at an integer scale"
        picture = png(run["dest"] / overlay_name(i, row["image_uri"])).astype(np.int16)
        source, s = source_at_scale(row)
        assert picture.shape == source.shape == (h * s, w * s, 3)
        assert masks, "the run mined no masks to draw"
        covered = decoded_masks(masks).any(axis=0).repeat(s, axis=0).repeat(s, axis=1)
        changed = np.abs(picture - source).max(axis=2) > 2
        # Every mask pixel is filled (a fill can only miss where its colour is the
        # image's), and by default nothing else is drawn: no box, no dot.
        assert changed[covered].mean() > 0.98, changed[covered].mean()
        assert not changed[~covered].any(), "pixels off the masks changed"


def box_outline_off_masks(row: dict, masks: list[dict], s: int) -> np.ndarray:
    """(H * s, W * s) bool: PNG pixels on the masks' box outlines that no mask covers."""
    h, w = row["image_height"], row["image_width"]
    outline = np.zeros((h * s, w * s), bool)
    for m in masks:
        x, y, bw, bh = (int(v) for v in m["bbox"])
        x0, y0, x1, y1 = x * s, y * s, (x + bw) * s - 1, (y + bh) * s - 1
        outline[y0, x0 : x1 + 1] = outline[y1, x0 : x1 + 1] = True
        outline[y0 : y1 + 1, x0] = outline[y0 : y1 + 1, x1] = True
    covered = decoded_masks(masks).any(axis=0).repeat(s, axis=0).repeat(s, axis=1)
    return outline & ~covered


def test_boxes_are_drawn_only_on_request(run):
    drawn_off_masks = 0
    for i, (row, masks) in enumerate(mined(run)):
        source, s = source_at_scale(row)
        off = box_outline_off_masks(row, masks, s)
        default = png(run["dest"] / overlay_name(i, row["image_uri"])).astype(np.int16)
        extras = png(run["extras"] / overlay_name(i, row["image_uri"])).astype(np.int16)
        assert (default[off] == source[off]).all(), "a box outline drawn by default"
        drawn_off_masks += (np.abs(extras[off] - source[off]).max(axis=1) > 2).sum()
    assert drawn_off_masks > 100, "--boxes drew no box outline off the masks"


def test_distinct_masks_show_in_distinct_colours(run):
    """The fill colour, recovered from the picture on pixels inside one mask only (away
    from its outline), differs from mask to mask."""
    alpha = render.OVERLAY_ALPHA
    recovered = []
    for i, (row, masks) in enumerate(mined(run)):
        picture = png(run["dest"] / overlay_name(i, row["image_uri"])).astype(np.float64)
        source, s = source_at_scale(row)
        decoded = decoded_masks(masks).repeat(s, axis=1).repeat(s, axis=2)
        alone = decoded & (decoded.sum(axis=0) == 1)
        colours = [
            np.median((picture[inner] - (1 - alpha) * source[inner]) / alpha, axis=0)
            for only, mask in zip(alone, decoded)
            if (inner := only & ~render.edge(mask, render.OUTLINE_WIDTH)).sum() >= 10 * s * s
        ]
        recovered += colours
        for a in range(len(colours)):
            for b in range(a + 1, len(colours)):
                assert np.abs(colours[a] - colours[b]).max() > 20, (row["image_uri"], a, b)
    assert len(recovered) >= 3, "too few masks with pixels of their own to compare"


def test_each_mask_is_outlined_in_its_colour(run):
    row, masks = mined(run)[0]
    picture = png(run["dest"] / overlay_name(0, row["image_uri"])).astype(np.int16)
    _, s = source_at_scale(row)
    order = render.draw_order(masks)
    colours = render.distinct_colours(len(masks))
    decoded = decoded_masks([masks[k] for k in order]).repeat(s, axis=1).repeat(s, axis=2)
    # The last mask drawn lies on top of all others: its outline shows whole, opaque.
    top = render.edge(decoded[-1], render.OUTLINE_WIDTH)
    assert top.sum() > 0
    assert (np.abs(picture[top] - colours[-1]).max(axis=1) <= 1).all()


def test_prompt_points_are_marked_in_their_masks_colour_on_request(run):
    row, masks = mined(run)[0]
    s = int(render.overlay_scale(row["image_height"], row["image_width"]))
    picture = png(run["extras"] / overlay_name(0, row["image_uri"])).astype(np.int16)
    colours = render.distinct_colours(len(masks))
    order = render.draw_order(masks)
    colour_of = {masks[k]["mask_id"]: colours[j] for j, k in enumerate(order)}
    by_point: dict[tuple, list] = {}
    for m in masks:
        by_point.setdefault(tuple(m["point_coords"][0]), []).append(colour_of[m["mask_id"]])
    for (x, y), candidates in by_point.items():
        # Image pixel (x, y) spans PNG pixels x * s .. (x + 1) * s: its centre is at + 0.5.
        centre = picture[int((y + 0.5) * s), int((x + 0.5) * s)]
        # A later mask from the same prompt point draws its dot on top: any of them.
        assert min(np.abs(centre - c).max() for c in candidates) <= 3, (x, y)


def test_top_k_draws_the_k_best_scored_masks_and_the_page_lists_their_scores(run, tmp_path):
    dest = tmp_path / "top2"
    assert main(["inspect", str(run["output"]), "--out", str(dest), "--top_k", "2"]) == 0
    page = (dest / "index.html").read_text()
    left_out = 0
    for i, (row, masks) in enumerate(mined(run)):
        best = sorted(masks, key=lambda m: -m["predicted_iou"])[:2]
        rest = [m for m in masks if m not in best]
        picture = png(dest / overlay_name(i, row["image_uri"])).astype(np.int16)
        source, s = source_at_scale(row)
        drawn = decoded_masks(best).any(axis=0).repeat(s, axis=0).repeat(s, axis=1)
        changed = np.abs(picture - source).max(axis=2) > 2
        assert not changed[~drawn].any(), "a mask beyond the top 2 was drawn"
        assert changed[drawn].mean() > 0.98
        if rest:  # drawn in the full picture, they change its pixels
            full = png(run["dest"] / overlay_name(i, row["image_uri"])).astype(np.int16)
            left_out += int((full != picture).any(axis=2).sum())
        for m in best:
            assert f"<td>{m['predicted_iou']:.3f}</td><td>{m['stability_score']:.3f}</td>" in page
    # The check can fail: the masks left out show in the picture of all masks.
    assert left_out > 0
    assert page.count('<span class="swatch"') == sum(min(2, len(m)) for _, m in mined(run))
    assert main(["inspect", str(run["output"]), "--out", str(dest), "--top_k", "-1"]) == 2


def test_the_page_links_each_image_to_its_overlay_and_lists_every_drawn_score(run):
    page = (run["dest"] / "index.html").read_text()
    for i, (row, masks) in enumerate(mined(run)):
        assert f'<a href="{overlay_name(i, row["image_uri"])}">overlay</a>' in page
        assert f"scores of the {len(masks)} masks drawn" in page
    rows = page.count('<span class="swatch"')
    assert rows == sum(len(masks) for _, masks in mined(run))


def test_the_rotated_jpeg_is_drawn_as_it_was_mined(run):
    rows = {Path(row["image_uri"]).name: (i, row) for i, (row, _) in enumerate(mined(run))}
    i, row = rows["rotated.jpg"]
    assert (row["image_width"], row["image_height"]) == (40, 90)
    s = int(render.overlay_scale(90, 40))
    assert png(run["dest"] / overlay_name(i, row["image_uri"])).shape == (90 * s, 40 * s, 3)


def test_summary_png_has_the_four_histograms(run):
    picture = png(run["dest"] / "summary.png")
    assert picture.shape == (750, 1100, 3)
    bars = {"#4c72b0", "#55a868", "#c44e52", "#8172b2"}  # one colour per histogram
    for colour in bars:
        rgb = np.array([int(colour[k : k + 2], 16) for k in (1, 3, 5)])
        assert (np.abs(picture.astype(int) - rgb).max(axis=2) <= 2).sum() > 200, colour


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("href", "src")]


def test_the_page_links_files_that_exist_and_lists_the_errors(run):
    page = (run["dest"] / "index.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert parser.links, "no links"
    for link in parser.links:
        assert (run["dest"] / link).is_file(), link
    linked = {link for link in parser.links if link.startswith("overlays/")}
    assert len(linked) == 3 and "summary.png" in parser.links
    assert str(run["images"] / "broken.png") in page  # the errors table
    assert "3 images mined" in page


def test_images_can_be_chosen_by_count_or_uri(run, tmp_path, capsys):
    uri = str(run["images"] / "img_1.png")
    assert main(["inspect", str(run["output"]), "--out", str(tmp_path / "a"), "--images", "1"]) == 0
    assert len(list((tmp_path / "a" / "overlays").glob("*.png"))) == 1
    assert main(["inspect", str(run["output"]), "--out", str(tmp_path / "b"), "--images", uri]) == 0
    assert [p.name for p in (tmp_path / "b" / "overlays").glob("*.png")] == ["000_img_1.png"]
    missing = str(run["images"] / "nope.png")
    assert main(["inspect", str(run["output"]), "--images", missing]) == 2
    assert f"not mined in this run (no images row): {missing}" in capsys.readouterr().err


def test_a_source_that_is_gone_is_drawn_on_grey_with_a_note(tmp_path):
    image = RunImage(1, str(tmp_path / "gone.png"), "0" * 64, 7, 5, "r", 0, [])
    pixels, note = source_pixels(image)
    assert pixels.shape == (5, 7, 3) and (pixels == 128).all()
    assert "source image unavailable" in note


def test_distinct_colours_are_pairwise_different():
    colours = render.distinct_colours(300)
    assert len({tuple(c) for c in colours}) == 300


def test_help_mentions_the_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "maskmine inspect OUTPUT" in out and "maskmine export OUTPUT" in out
    assert "--points_per_side" in out  # the mining options are still listed
