"""Pictures of a run with matplotlib (Agg, no display): mask overlays and a summary figure.

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
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

OVERLAY_ALPHA = 0.55
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


def render_overlay(
    image: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
    points: Sequence[np.ndarray],
    colours: np.ndarray,
) -> bytes:
    """PNG bytes of the overlay: masks tinted (see `blend`), each mask's box (XYWH px) outlined
    and its prompt points ((K, 2) xy px) marked, all in the mask's colour.

    image: (H, W, 3) uint8; masks: (N, H, W) bool; boxes: (N, 4); colours: (N, 3) uint8.
    The PNG is round(W * s) x round(H * s) pixels, s = overlay_scale(H, W), with no margins.
    """
    h, w = image.shape[:2]
    scale = overlay_scale(h, w)
    fig = Figure(figsize=(w * scale / _DPI, h * scale / _DPI), dpi=_DPI)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(
        blend(image, masks, colours), interpolation="nearest" if scale >= 1 else "antialiased"
    )
    line = max(1.0, 1.5 * min(scale, 3.0) / 2)
    for (x, y, bw, bh), pts, colour in zip(boxes, points, colours / 255.0):
        # A box spans pixel centres x..x+bw; its outline goes round the pixels' outer edges.
        ax.add_patch(
            Rectangle((x - 0.5, y - 0.5), bw + 1, bh + 1, fill=False, edgecolor=colour, lw=line)
        )
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        # Black-edged dots: visible on the tint of their own mask.
        ax.scatter(
            pts[:, 0],
            pts[:, 1],
            s=(5 * line) ** 2,  # points^2
            c=[colour],
            edgecolors="black",
            linewidths=0.8 * line,
            zorder=3,
        )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
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
