"""Pictures of a run: mask overlays (numpy and PIL, pixel-exact) and a summary figure
(matplotlib, Agg, no display).

The figures are built on `matplotlib.figure.Figure` directly, not pyplot, so no global
backend or figure state is touched and nothing needs closing.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from PIL import Image, ImageDraw

OVERLAY_ALPHA = 0.5
# Outline of each mask, px of the PNG: opaque, in the mask's colour, so that a mask's
# extent reads even where fills of overlapping masks mix.
OUTLINE_WIDTH = 2
# Overlays are drawn at an integer multiple of the image size (nearest neighbour), so that
# PNG pixel (y, x) // scale is image pixel (y, x); large images are shrunk instead.
TARGET_SIDE = 768
_DPI = 100


def distinct_colours(n: int) -> np.ndarray:
    """(n, 3) uint8 RGB colours, pairwise different, neighbours far apart in hue.

    Hues step by the golden ratio; saturation and value cycle through three levels each so
    that colours stay distinct beyond what hue alone separates after rounding to uint8.
    """
    colours = []
    for i in range(n):
        hue = (i * 0.618033988749895) % 1.0
        saturation = (0.95, 0.65, 0.8)[i % 3]
        value = (1.0, 0.8, 0.6)[(i // 3) % 3]
        colours.append(colorsys.hsv_to_rgb(hue, saturation, value))
    return np.round(np.array(colours).reshape(-1, 3) * 255).astype(np.uint8)


def draw_order(masks: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of `masks` largest area first, so that small masks stay visible on top."""
    return sorted(range(len(masks)), key=lambda i: -masks[i]["area"])


def blend(image: np.ndarray, masks: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8: `image` with each of the (N, H, W) bool `masks` tinted by its colour
    ((N, 3) uint8), alpha OVERLAY_ALPHA, painted in the given order (later on top)."""
    out = image.astype(np.float32)
    for mask, colour in zip(masks, colours):
        out[mask] = (1 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * colour.astype(np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def overlay_scale(height: int, width: int) -> float:
    """Pixels of the overlay PNG per image pixel: an integer >= 1, or < 1 for large images."""
    side = max(height, width)
    return float(max(1, TARGET_SIDE // side)) if side <= TARGET_SIDE else TARGET_SIDE / side


def edge(mask: np.ndarray, width: int) -> np.ndarray:
    """(H, W) bool: the pixels of `mask` within `width` px of its outside (4-neighbour).

    The image border does not count as outside: a mask cut by the border is not
    outlined along it, so the outline shows only where the object ends.
    """
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:] &= inner[:-1]
        shrunk[:-1] &= inner[1:]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def _resized(image: np.ndarray, masks: np.ndarray, size: tuple[int, int], scale: float):
    """image and masks at `size` (width, height): pixel copies at an integer scale, a
    filtered shrink (image) and nearest neighbour (masks) below 1."""
    if scale >= 1:
        s = int(scale)
        big = image.repeat(s, axis=0).repeat(s, axis=1)
        return big, masks.repeat(s, axis=1).repeat(s, axis=2)
    big = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    small = [
        np.asarray(Image.fromarray(m.astype(np.uint8)).resize(size, Image.Resampling.NEAREST)) > 0
        for m in masks
    ]
    return big, np.stack(small) if small else np.zeros((0, size[1], size[0]), bool)


def render_overlay(
    image: np.ndarray,
    masks: np.ndarray,
    colours: np.ndarray,
    boxes: np.ndarray | None = None,
    points: Sequence[np.ndarray] | None = None,
) -> bytes:
    """PNG bytes of the overlay, in the style of the SAM demo.

    Each mask is filled with its colour at OVERLAY_ALPHA and outlined in it, opaque,
    OUTLINE_WIDTH px wide at the PNG's resolution, one mask after another in the given
    order (pass larger masks first, see draw_order: small ones stay on top). Boxes
    ((N, 4) XYWH image px) and prompt points ((K, 2) xy image px per mask) are drawn in
    the mask's colour only when given.

    image: (H, W, 3) uint8; masks: (N, H, W) bool; colours: (N, 3) uint8.
    The PNG is round(W * s) x round(H * s) pixels, s = overlay_scale(H, W), no margins.
    """
    h, w = image.shape[:2]
    scale = overlay_scale(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    canvas, masks = _resized(image, masks, size, scale)
    out = canvas.astype(np.float32)
    for mask, colour in zip(masks, colours.astype(np.float32)):
        out[mask] = (1 - OVERLAY_ALPHA) * out[mask] + OVERLAY_ALPHA * colour
        out[edge(mask, OUTLINE_WIDTH)] = colour
    picture = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    line = max(1, round(min(scale, 3.0)))
    if boxes is not None:
        for (x, y, bw, bh), colour in zip(boxes, colours):
            # Round the outer edges of the box's pixels x .. x + bw - 1.
            corners = [x * scale, y * scale, (x + bw) * scale - 1, (y + bh) * scale - 1]
            draw.rectangle(corners, outline=tuple(int(c) for c in colour), width=line)
    if points is not None:
        radius = 3 * line + 1
        for pts, colour in zip(points, colours):
            for px, py in np.asarray(pts, dtype=np.float64).reshape(-1, 2):
                # Image pixel (x, y) spans PNG pixels x * s .. (x + 1) * s: its centre.
                cx, cy = (px + 0.5) * scale, (py + 0.5) * scale
                # Black-edged dots: visible on the tint of their own mask.
                draw.ellipse(
                    [cx - radius, cy - radius, cx + radius, cy + radius],
                    fill=tuple(int(c) for c in colour),
                    outline=(0, 0, 0),
                    width=max(1, line // 2),
                )
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return buf.getvalue()


def render_summary(
    masks_per_image: Sequence[int],
    areas: Sequence[int],
    predicted_ious: Sequence[float],
    stability_scores: Sequence[float],
    title: str,
) -> bytes:
    """PNG bytes of four histograms: masks per image, mask area (px, log bins), predicted
    IoU and stability score (both on [0, 1])."""
    fig = Figure(figsize=(11, 7.5), dpi=_DPI, layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(2, 2)
    counts = np.asarray(masks_per_image, dtype=np.int64)
    ax = axes[0, 0]
    if len(counts):
        top = int(counts.max())
        bins = np.arange(-0.5, top + 1.5) if top <= 40 else 30
        ax.hist(counts, bins=bins, color="#4c72b0", edgecolor="white")
    ax.set(title=f"masks per image ({len(counts)} images)", xlabel="masks", ylabel="images")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    ax = axes[0, 1]
    area = np.asarray(areas, dtype=np.float64)
    if len(area):
        lo, hi = max(1.0, area.min()), max(2.0, area.max())
        ax.hist(area, bins=np.geomspace(lo, hi * 1.0001, 30), color="#55a868", edgecolor="white")
        ax.set_xscale("log")
        # Ticks at 1, 2, 5 x 10^k as plain numbers: readable over a decade or two.
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(title=f"mask area ({len(area)} masks)", xlabel="area (px, log scale)", ylabel="masks")

    for ax, values, name, colour in (
        (axes[1, 0], predicted_ious, "predicted IoU", "#c44e52"),
        (axes[1, 1], stability_scores, "stability score", "#8172b2"),
    ):
        values = np.asarray(values, dtype=np.float64)
        # Predicted IoU is a regression output: an untrained model strays outside [0, 1].
        lo = min(0.0, float(values.min())) if len(values) else 0.0
        hi = max(1.0, float(values.max())) if len(values) else 1.0
        if len(values):
            ax.hist(values, bins=np.linspace(lo, hi, 41), color=colour, edgecolor="white")
            ax.axvline(
                float(np.median(values)),
                color="black",
                ls="--",
                lw=1,
                label=f"median {np.median(values):.3f}",
            )
            ax.legend(loc="upper left")
        ax.set(title=name, xlabel=name, ylabel="masks", xlim=(lo, hi))
    for ax in axes.flat:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
    if not len(area):
        fig.text(0.5, 0.5, "no masks in this run", ha="center", va="center", fontsize=20)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()
