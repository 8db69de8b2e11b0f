"""Held-out scenes from a second generator, to see what a model learned beyond its own.

`training.scenes` draws every training scene. A model can score well on its held-out
seeds by learning that generator's look (its six shapes, its fills, its noise) rather
than objects. This generator shares none of it: other shapes (stars, crescents,
squircles, crosses, arcs), other fills (checker, dots, radial, fine noise), another size
range (radius 5-90 px at 256 px, so more small and more large objects), and scene-wide
effects the trainer never applies: uneven lighting, a vignette, blur and stronger noise.
Objects occlude each other; a ground-truth mask is an object's visible part (no parts
inside wholes). Only evaluation uses it (`benchmarks/quality.py --generator shifted`).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .scenes import (
    PaintedObject,
    Scene,
    canvas_window,
    drop_tiny,
    ground_truth,
    pick_colour,
    rotated,
    smooth_noise,
)

SHIFTED_SHAPES = ("star", "crescent", "squircle", "cross", "arc")
SHIFTED_FILLS = ("flat", "checker", "dots", "radial", "grain")


def _shifted_shape(
    rng: np.random.Generator, kind: str, size: tuple[int, int], cx: float, cy: float, r: float
) -> np.ndarray:
    """(H, W) bool mask of a shape of `kind` centred at (cx, cy), radius about r px."""
    mask = np.zeros(size, dtype=bool)
    rows, cols, ys, xs = canvas_window(size, cx, cy, 1.5 * r)
    u, v = rotated(ys, xs, cx, cy, rng.uniform(0, 2 * np.pi))
    if kind == "star":
        points = int(rng.integers(4, 9))
        depth = rng.uniform(0.35, 0.65)  # inner radius over outer
        theta = np.arctan2(v, u)
        # Radius along a ray goes from r (tips) to depth * r (notches), a |cos| profile.
        tip = np.abs(np.cos(points * theta / 2))
        inside = np.hypot(u, v) <= r * (depth + (1 - depth) * tip**2)
    elif kind == "crescent":
        shift = rng.uniform(0.35, 0.7) * r
        inside = (u * u + v * v <= r * r) & ((u - shift) ** 2 + v * v > (0.85 * r) ** 2)
    elif kind == "squircle":
        aspect = rng.uniform(0.45, 1.0)
        inside = np.abs(u / r) ** 4 + np.abs(v / (aspect * r)) ** 4 <= 1
    elif kind == "cross":
        arm = rng.uniform(0.18, 0.35) * r
        inside = ((np.abs(u) <= r) & (np.abs(v) <= arm)) | ((np.abs(v) <= r) & (np.abs(u) <= arm))
    elif kind == "arc":
        # A thick stroke along part of a circle: thin, curved, open.
        width = max(2.0, rng.uniform(0.12, 0.3) * r)
        span = rng.uniform(0.6, 1.6) * np.pi
        radius = np.hypot(u, v)
        inside = (np.abs(radius - 0.75 * r) <= width / 2) & (np.abs(np.arctan2(v, u)) <= span / 2)
    else:
        raise ValueError(f"unknown shape {kind!r}")
    mask[rows, cols] = inside
    return mask


def _shifted_paint(
    rng: np.random.Generator,
    fill: str,
    colour: np.ndarray,
    pixels: tuple[np.ndarray, np.ndarray],
    centre: tuple[float, float],
    radius: float,
) -> np.ndarray:
    """(N, 3) float32 colours of a fill at N pixels given as (ys, xs) index arrays."""
    colour = colour.astype(np.float32)
    n = len(pixels[0])
    if fill == "flat":
        return np.broadcast_to(colour, (n, 3))
    ys, xs = (p.astype(np.float32) for p in pixels)
    u, v = rotated(ys, xs, centre[0], centre[1], rng.uniform(0, 2 * np.pi))
    second = colour + rng.uniform(-60, 60, 3).astype(np.float32)
    if fill == "checker":
        period = rng.uniform(3, 10)
        odd = ((np.floor(u / period) + np.floor(v / period)) % 2 == 1)[:, None]
        return np.where(odd, second, colour)
    if fill == "dots":
        period = rng.uniform(5, 12)
        du = (u / period) % 1 - 0.5
        dv = (v / period) % 1 - 0.5
        dot = (du * du + dv * dv < rng.uniform(0.04, 0.12))[:, None]
        return np.where(dot, second, colour)
    if fill == "radial":
        t = np.clip(np.hypot(u, v) / max(radius, 1.0), 0, 1)[:, None]
        return colour + t * (second - colour)
    if fill == "grain":
        return colour + rng.uniform(8, 20) * rng.standard_normal((n, 3)).astype(np.float32)
    raise ValueError(f"unknown fill {fill!r}")


def _shifted_background(
    rng: np.random.Generator, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float32 background (a two-colour ramp, tiles or coarse blotches) and its
    (3,) mean colour."""
    h, w = size
    base = rng.uniform(30, 225, 3).astype(np.float32)
    other = np.clip(base + rng.uniform(-50, 50, 3), 0, 255).astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    style = rng.integers(3)
    if style == 0:  # ramp
        u, _ = rotated(ys, xs, w / 2, h / 2, rng.uniform(0, 2 * np.pi))
        t = np.clip(u / max(h, w) + 0.5, 0, 1)[..., None]
        image = base + t * (other - base)
    elif style == 1:  # large low-contrast tiles
        tile = rng.uniform(20, 60)
        odd = ((np.floor(ys / tile) + np.floor(xs / tile)) % 2 == 1)[..., None]
        image = np.where(odd, base + 0.4 * (other - base), base)
    else:  # coarse blotches
        image = base + 40 * smooth_noise(rng, size, int(rng.integers(4, 10)))[..., None]
    return image.astype(np.float32), base


def _lighting(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 1) float32 gain: a linear light gradient of up to +-30% times a vignette."""
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u, _ = rotated(ys, xs, w / 2, h / 2, rng.uniform(0, 2 * np.pi))
    gain = 1 + rng.uniform(-0.3, 0.3) * u / (max(h, w) / 2)
    r2 = ((xs - w / 2) / (w / 2)) ** 2 + ((ys - h / 2) / (h / 2)) ** 2
    gain *= 1 - rng.uniform(0, 0.3) * np.clip(r2 / 2, 0, 1)
    return gain[..., None]


def generate_shifted_scene(
    rng: np.random.Generator | int, size: tuple[int, int] = (256, 256), max_objects: int = 14
) -> Scene:
    """A random scene of `size` (H, W) with 3..max_objects objects (before dropping those
    left tiny by occlusion), drawn unlike `training.scenes.generate_scene`."""
    rng = np.random.default_rng(rng)
    h, w = size
    scale = min(h, w) / 256.0
    canvas, bg = _shifted_background(rng, size)
    objects: list[PaintedObject] = []
    for _ in range(int(rng.integers(3, max_objects + 1))):
        centre = (rng.uniform(0, w - 1), rng.uniform(0, h - 1))
        radius = scale * float(np.exp(rng.uniform(np.log(5), np.log(90))))
        kind = str(rng.choice(SHIFTED_SHAPES))
        fill = str(rng.choice(SHIFTED_FILLS))
        colour = np.round(pick_colour(rng, [bg] + [o.colour for o in objects]))
        shape = _shifted_shape(rng, kind, size, centre[0], centre[1], radius)
        paint = _shifted_paint(rng, fill, colour, np.nonzero(shape), centre, radius)
        objects.append(PaintedObject(shape, kind, colour, fill, paint))
    objects = drop_tiny(objects, max(16, round(30 * scale * scale)))

    for obj in objects:
        canvas[obj.shape] = obj.paint
    canvas *= _lighting(rng, size)
    blurred = Image.fromarray(np.clip(np.round(canvas), 0, 255).astype(np.uint8))
    blurred = blurred.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))
    noisy = np.asarray(blurred, dtype=np.float32)
    noisy += rng.uniform(2, 14) * rng.standard_normal((h, w, 3), dtype=np.float32)
    image = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return ground_truth(image, objects, size)
