"""`maskmine inspect`: overlay PNGs for chosen images, a summary PNG and an HTML page.

Layout under the destination folder (local or gs://):
  index.html, summary.png, overlays/NNN_<file name>.png
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from pycocotools import mask as mask_utils

from transforms.decode import decode_image_bytes, read_image_bytes
from transforms.uris import normalize_uri

from . import render
from .dataset import RunImage, keep_newest, load_run, newest_runs
from .files import write_bytes, write_text
from .page import ImageEntry, MaskScore, RunFacts, render_page
from .tables import RunError, check_run, read_table

DEFAULT_IMAGES = 8
# Masks drawn per image, highest predicted IoU first: beyond a few dozen overlapping
# fills the picture turns into a colour mush (the demo keeps about 120 per image).
DEFAULT_TOP_K = 40
_ERRORS_LISTED = 50
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclasses.dataclass(frozen=True)
class InspectResult:
    """Paths written (under the destination folder)."""

    index: str
    summary: str
    overlays: list[str]


def choose_uris(all_uris: Sequence[str], selection: Sequence[str] | None) -> list[str]:
    """URIs to draw: the first DEFAULT_IMAGES (sorted), the first N if `selection` is one
    integer, or the URIs listed (local paths may be relative). Raises RunError for URIs
    that are not in the run."""
    ordered = sorted(set(all_uris))  # an image mined by two runs is drawn once
    if not selection:
        return ordered[:DEFAULT_IMAGES]
    if len(selection) == 1 and selection[0].isdigit():
        return ordered[: int(selection[0])]
    known = set(ordered)
    wanted = [normalize_uri(u) for u in selection]
    missing = [u for u in wanted if u not in known]
    if missing:
        raise RunError(f"not mined in this run (no images row): {', '.join(missing)}")
    return list(dict.fromkeys(wanted))


def source_pixels(image: RunImage) -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 pixels as mined (the pipeline's decoder, EXIF applied) and a note.

    When the source cannot be read, or no longer matches what was mined, the pixels are a
    grey canvas of the mined size and the note says why: the masks are still drawn.
    """
    grey = np.full((image.height, image.width, 3), 128, np.uint8)
    try:
        data = read_image_bytes(image.uri)
        pixels = decode_image_bytes(data)
    except Exception as e:  # shown on the page: a moved source must not stop the others
        return grey, f"source image unavailable ({e}); masks drawn on grey"
    if pixels.shape[:2] != (image.height, image.width):
        return grey, (
            f"source is now {pixels.shape[1]} x {pixels.shape[0]} px, mined at "
            f"{image.width} x {image.height}; masks drawn on grey"
        )
    if hashlib.sha256(data).hexdigest() != image.sha256:
        return pixels, "source file changed since it was mined (sha256 differs)"
    return pixels, ""


def shown_masks(image: RunImage, top_k: int) -> list[dict]:
    """Masks to draw: the `top_k` with the highest predicted IoU (0 = all), best first."""
    masks = sorted(image.masks, key=lambda m: -m["predicted_iou"])
    return masks[:top_k] if top_k > 0 else masks


def overlay_png(
    pixels: np.ndarray, masks: Sequence[dict], boxes: bool = False, points: bool = False
) -> tuple[bytes, list[tuple[dict, np.ndarray]]]:
    """PNG of `masks` (masks-table rows) over `pixels`, largest drawn first, and each
    mask with its (3,) uint8 colour in the picture, in the order of `masks`.

    boxes / points: also outline each mask's box / mark its prompt points."""
    order = render.draw_order(masks)
    rows = [masks[i] for i in order]
    colours = render.distinct_colours(len(rows))
    h, w = pixels.shape[:2]
    decoded = (
        np.stack([mask_utils.decode(m["segmentation"]).astype(bool) for m in rows])
        if rows
        else np.zeros((0, h, w), bool)
    )
    png = render.render_overlay(
        pixels,
        decoded,
        colours,
        boxes=np.array([m["bbox"] for m in rows], dtype=np.float64).reshape(-1, 4)
        if boxes
        else None,
        points=[np.asarray(m["point_coords"], dtype=np.float64) for m in rows] if points else None,
    )
    colour_of = {i: colours[j] for j, i in enumerate(order)}
    return png, [(m, colour_of[i]) for i, m in enumerate(masks)]


def overlay_name(index: int, uri: str) -> str:
    stem = posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]
    stem = _UNSAFE.sub("_", stem).strip("_") or "image"
    return f"overlays/{index:03d}_{stem}.png"


def _unique(table: pa.Table, column: str) -> list:
    return pc.unique(table.column(column)).to_pylist()


def run_facts(output: str) -> tuple[RunFacts, bytes]:
    """Run-level figures and the summary PNG, from the tables' small columns only."""
    # As in the overlays and exports: an image mined by several runs counts once, newest.
    images = read_table(output, "images", ["image_uri", "masks_kept", "run_id", "created_at"])
    newest = newest_runs(images)
    images = keep_newest(images, newest)
    masks = read_table(
        output,
        "masks",
        [
            "image_uri",
            "area",
            "predicted_iou",
            "stability_score",
            "model_type",
            "checkpoint_sha256",
            "generator_params",
            "run_id",
        ],
    )
    masks = keep_newest(masks, newest)
    errors = read_table(output, "errors", ["image_uri", "stage", "error"])
    pairs = masks.select(["model_type", "checkpoint_sha256"]).group_by(
        ["model_type", "checkpoint_sha256"]
    )
    models = sorted(
        f"{r['model_type']} {r['checkpoint_sha256'][:12]}" for r in pairs.aggregate([]).to_pylist()
    )
    params = sorted(
        {json.dumps(json.loads(p), sort_keys=True) for p in _unique(masks, "generator_params")}
    )
    run_ids = sorted(set(_unique(images, "run_id")) | set(_unique(masks, "run_id")))
    facts = RunFacts(
        output=output,
        images=images.num_rows,
        masks=masks.num_rows,
        errors=errors.num_rows,
        run_ids=run_ids,
        models=models,
        generator_params=params,
        error_rows=[tuple(r.values()) for r in errors.slice(0, _ERRORS_LISTED).to_pylist()],
    )
    summary = render.render_summary(
        images.column("masks_kept").to_pylist(),
        masks.column("area").to_pylist(),
        masks.column("predicted_iou").to_pylist(),
        masks.column("stability_score").to_pylist(),
        title=f"{output}: {facts.images} images, {facts.masks} masks",
    )
    return facts, summary


def inspect_run(
    output: str,
    dest: str,
    selection: Sequence[str] | None = None,
    top_k: int = DEFAULT_TOP_K,
    boxes: bool = False,
    points: bool = False,
) -> InspectResult:
    """Write the overlays of the chosen images, the summary and index.html under `dest`.

    top_k: masks drawn per image, highest predicted IoU first (0: all); boxes, points:
    also draw each mask's box and prompt points."""
    check_run(output)
    all_uris = read_table(output, "images", ["image_uri"]).column(0).to_pylist()
    uris = choose_uris(all_uris, selection)
    facts, summary_png = run_facts(output)
    extras = [
        what for what, on in (("boxes outlined", boxes), ("prompt points marked", points)) if on
    ]
    facts = dataclasses.replace(facts, drawn_extras="".join(f"; {e}" for e in extras))
    summary = FileSystems.join(dest, "summary.png")
    write_bytes(summary, summary_png)
    entries, overlays = [], []
    for i, image in enumerate(load_run(output, uris)):
        pixels, note = source_pixels(image)
        masks = shown_masks(image, top_k)
        name = overlay_name(i, image.uri)
        path = FileSystems.join(dest, *name.split("/"))
        png, drawn = overlay_png(pixels, masks, boxes, points)
        write_bytes(path, png)
        overlays.append(path)
        entries.append(
            ImageEntry(
                uri=image.uri,
                width=image.width,
                height=image.height,
                masks=len(image.masks),
                masks_generated=image.masks_generated,
                masks_shown=len(masks),
                overlay=name,
                note=note,
                scores=[
                    MaskScore(
                        colour="#{:02x}{:02x}{:02x}".format(*(int(c) for c in colour)),
                        predicted_iou=float(m["predicted_iou"]),
                        stability_score=float(m["stability_score"]),
                        area=int(m["area"]),
                    )
                    for m, colour in drawn
                ],
            )
        )
    index = FileSystems.join(dest, "index.html")
    write_text(index, render_page(facts, "summary.png", entries))
    return InspectResult(index=index, summary=summary, overlays=overlays)
