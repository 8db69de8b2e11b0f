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
    assert main(["inspect", str(output), "--out", str(dest), "--max_masks", "0"]) == 0
    return {"output": output, "dest": dest, "images": images}


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


def test_overlays_have_the_image_size_and_tint_every_mask_pixel(run):
    for i, (row, masks) in enumerate(mined(run)):
        h, w = row["image_height"], row["image_width"]
        scale = render.overlay_scale(h, w)
        assert scale == int(scale) >= 2, "test images are small: drawn at an integer scale"
        s = int(scale)
        picture = png(run["dest"] / overlay_name(i, row["image_uri"]))
        assert picture.shape == (h * s, w * s, 3)
        # One PNG pixel per image pixel, from the middle of each s x s block.
        sampled = picture[s // 2 :: s, s // 2 :: s].astype(np.int16)
        source = decode_image_bytes(Path(row["image_uri"]).read_bytes()).astype(np.int16)
        assert sampled.shape == source.shape
        covered = np.zeros((h, w), bool)
        for m in masks:
            covered |= mask_utils.decode(m["segmentation"]).astype(bool)
        assert masks and covered.any(), "the run mined no masks to draw"
        changed = np.abs(sampled - source).max(axis=2) > 2
        assert changed[covered].mean() > 0.9, "mask pixels must be tinted"
        # Off the masks only box outlines and prompt dots change pixels: most stay as is.
        if (~covered).sum() > 50:
            assert changed[~covered].mean() < 0.5


def test_distinct_masks_show_in_distinct_colours(run):
    """The tint colour, recovered from the picture on pixels covered by one mask only,
    differs from mask to mask."""
    alpha = render.OVERLAY_ALPHA
    recovered = []
    for i, (row, masks) in enumerate(mined(run)):
        s = int(render.overlay_scale(row["image_height"], row["image_width"]))
        picture = png(run["dest"] / overlay_name(i, row["image_uri"]))
        sampled = picture[s // 2 :: s, s // 2 :: s].astype(np.float64)
        source = decode_image_bytes(Path(row["image_uri"]).read_bytes()).astype(np.float64)
        decoded = np.stack([mask_utils.decode(m["segmentation"]).astype(bool) for m in masks])
        alone = decoded & (decoded.sum(axis=0) == 1)
        colours = [
            np.median((sampled[only] - (1 - alpha) * source[only]) / alpha, axis=0)
            for only in alone
            if only.sum() >= 10
        ]
        recovered += colours
        for a in range(len(colours)):
            for b in range(a + 1, len(colours)):
                assert np.abs(colours[a] - colours[b]).max() > 20, (row["image_uri"], a, b)
    assert len(recovered) >= 3, "too few masks with pixels of their own to compare"


def test_prompt_points_are_marked_in_their_masks_colour(run):
    row, masks = mined(run)[0]
    s = int(render.overlay_scale(row["image_height"], row["image_width"]))
    picture = png(run["dest"] / overlay_name(0, row["image_uri"])).astype(np.int16)
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
