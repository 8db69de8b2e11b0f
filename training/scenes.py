"""Seeded synthetic scenes with exact instance masks, for training and testing SAM.

A scene is a noisy textured background with several objects painted over it in
order: discs, ellipses, polygons, rings, bars and blobs with flat, gradient or
textured fills. Later objects occlude earlier ones; a ground-truth mask is the
visible part of an object. Some objects carry a smaller object inside them (a
part); the part and the whole (parent plus part) are both ground truth, so a
point on the part is ambiguous between the two.

Seeds: training draws scene seeds from [0, 10**6); evaluation uses seeds from
EVAL_SEED_START on, which training never sees.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

EVAL_SEED_START = 10**6
SHAPES = ("disc", "ellipse", "polygon", "ring", "bar", "blob")
# Shapes that can hold a part: filled and roughly convex.
_CONTAINERS = ("disc", "ellipse", "polygon", "blob")
FILLS = ("flat", "gradient", "texture")
_MIN_COLOUR_DISTANCE = 80.0  # RGB L2 between an object colour and its neighbours


@dataclasses.dataclass(frozen=True)
class Scene:
    """One synthetic scene.

    image: (H, W, 3) uint8 RGB.
    masks: (K, H, W) bool ground-truth instances (visible pixels).
    parents: (K,) int64; for a part, the index of its whole in `masks`, else -1.
    kinds: K shape names ("disc", ...); a whole has its parent's shape.
    colours: (K, 3) uint8 base colour of each object's own paint.
    fills: K fill names; a "flat" object's own pixels are exactly its colour.
    """

    image: np.ndarray
    masks: np.ndarray
    parents: np.ndarray
    kinds: tuple[str, ...]
    colours: np.ndarray
    fills: tuple[str, ...]

    def own_pixels(self, k: int) -> np.ndarray:
        """(H, W) bool pixels painted by object k itself (a whole minus its parts)."""
        parts = self.masks[self.parents == k]
        return self.masks[k] & ~parts.any(axis=0) if len(parts) else self.masks[k]


@dataclasses.dataclass
class PaintedObject:
    shape: np.ndarray  # (H, W) bool, the full (unoccluded) shape
    kind: str
    colour: np.ndarray  # (3,) float
    fill: str
    paint: np.ndarray  # (N, 3) float32 colours of the shape's N pixels (row-major order)
    parent: int = -1  # index in the object list of the container, or -1


def rotated(ys, xs, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in a frame centred at (cx, cy) and rotated by `angle` (rad)."""
    dx, dy = xs - cx, ys - cy
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """(H, W) float32 noise in about [-1, 1], smooth over ~size/cells pixels."""
    h, w = size
    coarse = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((w, h), Image.BILINEAR))


def canvas_window(
    size: tuple[int, int], cx: float, cy: float, reach: float
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Slices of the canvas within `reach` px of (cx, cy) and the pixel ys, xs there."""
    h, w = size
    y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 2)
    x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 2)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    return slice(y0, y1), slice(x0, x1), ys, xs


def _shape_mask(
    rng: np.random.Generator, kind: str, size: tuple[int, int], cx: float, cy: float, r: float
) -> np.ndarray:
    """(H, W) bool mask of a shape of `kind` centred at (cx, cy), radius about r px."""
    mask = np.zeros(size, dtype=bool)
    if kind == "polygon":
        n = int(rng.integers(3, 9))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = r * rng.uniform(0.55, 1.0, n)
        points = [(cx + a * np.cos(t), cy + a * np.sin(t)) for a, t in zip(radii, angles)]
        canvas = Image.new("1", (size[1], size[0]), 0)
        ImageDraw.Draw(canvas).polygon(points, fill=1)
        return np.asarray(canvas, dtype=bool)
    # Computed only in a window around the centre: most of the canvas is far away.
    rows, cols, ys, xs = canvas_window(size, cx, cy, 1.7 * r)
    angle = rng.uniform(0, np.pi)
    u, v = rotated(ys, xs, cx, cy, angle)
    if kind == "disc":
        inside = u * u + v * v <= r * r
    elif kind in ("ellipse", "ring"):
        ratio = rng.uniform(0.35, 0.8) if kind == "ellipse" else rng.uniform(0.6, 1.0)
        d = (u / r) ** 2 + (v / (r * ratio)) ** 2
        inside = d <= 1
        if kind == "ring":
            inside &= d >= rng.uniform(0.3, 0.6) ** 2
    elif kind == "bar":
        half_width = rng.uniform(2.0, max(3.0, 0.25 * r))
        inside = (np.abs(u) <= 1.6 * r) & (np.abs(v) <= half_width)
    elif kind == "blob":
        theta = np.arctan2(v, u)
        radius = np.ones_like(theta)
        for k in range(2, 5):
            radius += rng.uniform(0, 0.6 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        inside = u * u + v * v <= (r * radius) ** 2
    else:
        raise ValueError(f"unknown shape {kind!r}")
    mask[rows, cols] = inside
    return mask


def _paint(
    rng: np.random.Generator,
    fill: str,
    colour: np.ndarray,
    pixels: tuple[np.ndarray, np.ndarray],
    size: tuple[int, int],
    centre: tuple[float, float],
) -> np.ndarray:
    """(N, 3) float32 colours of a fill at N pixels given as (ys, xs) index arrays."""
    colour = colour.astype(np.float32)
    if fill == "flat":
        return np.broadcast_to(colour, (len(pixels[0]), 3))
    ys, xs = (p.astype(np.float32) for p in pixels)
    u, _ = rotated(ys, xs, centre[0], centre[1], rng.uniform(0, 2 * np.pi))
    if fill == "gradient":
        # Colour shifts by up to +-delta over +-64 px from the centre.
        delta = rng.uniform(-45, 45, 3).astype(np.float32)
        return colour + np.clip(u / 64.0, -1, 1)[:, None] * delta
    if rng.random() < 0.5:
        pattern = np.sin(2 * np.pi * u / rng.uniform(4, 14))  # stripes
    else:
        pattern = smooth_noise(rng, size, int(rng.integers(16, 48)))[pixels]
    return colour + rng.uniform(10, 22) * pattern[:, None]


def _background(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float32 noisy textured background and its (3,) mean colour."""
    h, w = size
    base = rng.uniform(30, 225, 3).astype(np.float32)
    image = np.broadcast_to(base, (h, w, 3)).copy()
    for cells, amp in ((3, 30.0), (int(rng.integers(8, 24)), 15.0)):
        image += amp * rng.uniform(0.3, 1.0) * smooth_noise(rng, size, cells)[..., None]
    image += rng.uniform(2, 10) * rng.standard_normal((h, w, 3), dtype=np.float32)
    return image, base


def pick_colour(rng: np.random.Generator, avoid: list[np.ndarray]) -> np.ndarray:
    """A (3,) colour far (RGB L2) from every colour in `avoid`, best of a few tries."""
    best, best_distance = None, -1.0
    for _ in range(24):
        colour = rng.uniform(15, 240, 3)
        distance = min((float(np.linalg.norm(colour - a)) for a in avoid), default=1e9)
        if distance >= _MIN_COLOUR_DISTANCE:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _new_object(
    rng: np.random.Generator,
    size: tuple[int, int],
    avoid: list[np.ndarray],
    centre: tuple[float, float],
    radius: float,
    kinds: tuple[str, ...] = SHAPES,
) -> PaintedObject:
    kind = str(rng.choice(kinds))
    colour = np.round(pick_colour(rng, avoid))
    fill = str(rng.choice(FILLS, p=[0.5, 0.25, 0.25]))
    shape = _shape_mask(rng, kind, size, centre[0], centre[1], radius)
    paint = _paint(rng, fill, colour, np.nonzero(shape), size, centre)
    return PaintedObject(shape, kind, colour, fill, paint)


def _add_part(
    rng: np.random.Generator,
    size: tuple[int, int],
    parent: PaintedObject,
    index: int,
    bg: np.ndarray,
) -> PaintedObject | None:
    """A smaller object fully inside `parent`'s shape, or None if none fits."""
    ys, xs = np.nonzero(parent.shape)
    if len(ys) < 200:
        return None
    extent = np.sqrt(len(ys) / np.pi)  # radius of a disc of the same area
    for _ in range(4):
        i = int(rng.integers(len(ys)))
        part = _new_object(
            rng,
            size,
            [parent.colour, bg],
            (float(xs[i]), float(ys[i])),
            extent * rng.uniform(0.25, 0.45),
            kinds=("disc", "ellipse", "polygon", "blob", "bar"),
        )
        area = part.shape.sum()
        if area >= 30 and not (part.shape & ~parent.shape).any() and area < 0.5 * len(ys):
            part.parent = index
            return part
    return None


def visible_masks(objects: list[PaintedObject]) -> list[np.ndarray]:
    """Visible pixels of each object: its shape minus every later shape."""
    covered = np.zeros_like(objects[0].shape)
    out = []
    for obj in reversed(objects):
        out.append(obj.shape & ~covered)
        covered |= obj.shape
    return out[::-1]


def drop_tiny(objects: list[PaintedObject], min_area: int) -> list[PaintedObject]:
    """Remove objects whose visible area is below min_area, one at a time (removing
    one only uncovers others). An orphaned part becomes a top-level object."""
    while objects:
        areas = [int(v.sum()) for v in visible_masks(objects)]
        small = [i for i, a in enumerate(areas) if a < min_area]
        if not small:
            return objects
        drop = min(small, key=lambda i: areas[i])
        objects = objects[:drop] + objects[drop + 1 :]
        for obj in objects:
            if obj.parent == drop:
                obj.parent = -1
            elif obj.parent > drop:
                obj.parent -= 1
    return objects


def generate_scene(
    rng: np.random.Generator | int, size: tuple[int, int] = (256, 256), max_objects: int = 10
) -> Scene:
    """A random scene of `size` (H, W) with 3..max_objects top-level objects (before
    dropping those left tiny by occlusion)."""
    rng = np.random.default_rng(rng)
    h, w = size
    scale = min(h, w) / 256.0
    canvas, bg = _background(rng, size)
    objects: list[PaintedObject] = []
    for _ in range(int(rng.integers(3, max_objects + 1))):
        centre = (rng.uniform(0, w - 1), rng.uniform(0, h - 1))
        radius = scale * float(np.exp(rng.uniform(np.log(9), np.log(60))))
        avoid = [bg] + [o.colour for o in objects]
        obj = _new_object(rng, size, avoid, centre, radius)
        objects.append(obj)
        if obj.kind in _CONTAINERS and rng.random() < 0.35:
            part = _add_part(rng, size, obj, len(objects) - 1, bg)
            if part is not None:
                objects.append(part)
    objects = drop_tiny(objects, max(16, round(40 * scale * scale)))

    for obj in objects:
        canvas[obj.shape] = obj.paint
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return ground_truth(image, objects, size)


def ground_truth(image: np.ndarray, objects: list[PaintedObject], size: tuple[int, int]) -> Scene:
    """Scene from painted objects: a parent's mask is the whole (parent + parts)."""
    visible = visible_masks(objects) if objects else []
    masks = [v.copy() for v in visible]
    for i, obj in enumerate(objects):
        if obj.parent >= 0:
            masks[obj.parent] |= visible[i]
    return Scene(
        image=image,
        masks=np.stack(masks) if masks else np.zeros((0, *size), dtype=bool),
        parents=np.array([o.parent for o in objects], dtype=np.int64),
        kinds=tuple(o.kind for o in objects),
        colours=np.array([o.colour for o in objects], dtype=np.uint8).reshape(-1, 3),
        fills=tuple(o.fill for o in objects),
    )


def make_scene(
    rng: np.random.Generator | int, size: tuple[int, int] = (256, 256)
) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 RGB image and (K, H, W) bool instance masks of a random scene."""
    scene = generate_scene(rng, size)
    return scene.image, scene.masks
