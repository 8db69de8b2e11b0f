"""Image and coordinate transforms into and out of the encoder's input frame.

The encoder sees the image resized so its longest side is `image_size` (PIL
bilinear), normalised with the SAM pixel statistics and zero-padded bottom/right
to a square. Prompts are given in original pixels and mapped by the same scale.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# RGB, 0..255 scale.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def resized_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to `long_side`, rounded half up."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (h, w, 3) uint8 with max(h, w) == long_side."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    h, w = resized_shape(image.shape[0], image.shape[1], long_side)
    return np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def coords_to_input_frame(
    coords: torch.Tensor, original_size: tuple[int, int], long_side: int
) -> torch.Tensor:
    """(..., 2) xy in original pixels -> xy in the resized frame (float)."""
    h, w = original_size
    new_h, new_w = resized_shape(h, w, long_side)
    # float64 like the original, so the rounding matches to the last bit.
    scale = torch.tensor([new_w / w, new_h / h], dtype=torch.float64, device=coords.device)
    return (coords.to(torch.float64) * scale).to(torch.float32)


def boxes_to_input_frame(
    boxes: torch.Tensor, original_size: tuple[int, int], long_side: int
) -> torch.Tensor:
    """(..., 4) XYXY in original pixels -> XYXY in the resized frame."""
    corners = coords_to_input_frame(
        boxes.reshape(*boxes.shape[:-1], 2, 2), original_size, long_side
    )
    return corners.reshape(boxes.shape)


def normalize_and_pad(images: list[torch.Tensor], image_size: int) -> torch.Tensor:
    """Resized (3, h, w) uint8 images -> (B, 3, S, S) float32 normalised, zero-padded."""
    device = images[0].device
    mean = torch.tensor(PIXEL_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).view(3, 1, 1)
    batch = torch.zeros(len(images), 3, image_size, image_size, device=device)
    for i, image in enumerate(images):
        h, w = image.shape[-2:]
        batch[i, :, :h, :w] = (image - mean) / std
    return batch


def interpolate_masks(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
) -> torch.Tensor:
    """(B, M, s, s) low-res logits -> (B, M, H, W), computed as the original model
    does: bilinear to the padded input square, crop, bilinear to the original size.

    The predictor returns these, bit for bit the reference's values; the mask
    generator uses the faster `upscale_masks`.
    """
    masks = F.interpolate(low_res, (image_size, image_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


def bilinear_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out_size, in_size) float64 matrix of 1-D bilinear resampling, align_corners=False.

    Row i holds the two weights F.interpolate gives output i: source position
    (i + 0.5) * in/out - 0.5, clamped at 0, between its floor and the next index.
    """
    dst = torch.arange(out_size, dtype=torch.float64)
    src = ((dst + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = src - lo
    rows = torch.arange(out_size)
    matrix = torch.zeros(out_size, in_size, dtype=torch.float64)
    matrix.index_put_((rows, lo), 1 - frac, accumulate=True)
    matrix.index_put_((rows, hi), frac, accumulate=True)
    return matrix


@functools.lru_cache(maxsize=32)
def _upscale_matrices(
    low_res: int,
    image_size: int,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column matrices (H, s), (W, s) of the whole upscale-crop-resize."""
    mats = []
    for axis in (0, 1):
        to_input = bilinear_matrix(image_size, low_res)[: input_size[axis]]
        to_original = bilinear_matrix(original_size[axis], input_size[axis])
        mats.append((to_original @ to_input).to(device=device, dtype=torch.float32))
    return mats[0], mats[1]


def upscale_masks(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
    transposed: bool = False,
) -> torch.Tensor:
    """(B, M, s, s) low-res logits -> (B, M, H, W) logits at the original size, or
    (B, M, W, H) contiguous if `transposed` (column-major masks for COCO RLE).

    The original model resizes bilinearly to the padded input square, crops away
    the padding and resizes bilinearly to the original size (align_corners=False
    both times). Both resizes are linear and separable, so the chain is one row
    matrix and one column matrix: logits = R @ low_res @ C^T, two GEMMs instead of
    two interpolations through a 1024 x 1024 intermediate. Same values up to float
    rounding: on logits of scale 5, 1.5e-6 from the float64 result where float32
    F.interpolate is 6e-5 from it (it computes source positions in float32).
    """
    rows, cols = _upscale_matrices(
        low_res.shape[-1], image_size, tuple(input_size), tuple(original_size), low_res.device
    )
    rows, cols = rows.to(low_res.dtype), cols.to(low_res.dtype)
    if transposed:
        # (R L C^T)^T = C L^T R^T
        return cols @ (low_res.transpose(-1, -2) @ rows.T)
    return rows @ (low_res @ cols.T)


class RegionUpscaler:
    """`upscale_masks`, evaluated only where a mask's logits can exceed a threshold.

    Each full-resolution logit is a convex combination (non-negative weights summing to
    1) of the low-res logits in its support: a few rows of R times a few columns of C.
    So where every low-res value of a support is at most `threshold`, so is the
    full-resolution value. `regions` finds, per mask, the smallest full-resolution box
    outside of which no logit can exceed the threshold; `block_t` computes the logits
    inside it, the same products as `upscale_masks` restricted to their non-zero terms.
    Masks of small objects then cost their box, not the whole image.

    input_size, original_size: as in `upscale_masks`; low_res: side s of the logits.
    """

    # Low-res values within this of the threshold count as above it, so that float
    # rounding of the weights (summing to 1 +- 1e-7) can never put a full-resolution
    # value above the threshold outside the box.
    MARGIN = 1e-3
    # Output rows (columns) per tile of `block_t`.
    TILE = 32

    def __init__(
        self,
        low_res: int,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        image_size: int,
        device: torch.device,
    ) -> None:
        self.rows, self.cols = _upscale_matrices(
            low_res, image_size, tuple(input_size), tuple(original_size), device
        )
        # First and last low-res index each output row / column draws on (non-decreasing).
        self.row_lo, self.row_hi = _support(self.rows)
        self.col_lo, self.col_hi = _support(self.cols)
        # Tiles of TILE output rows (columns) with the few low-res rows (columns) they
        # draw on: a block is then two batched products over those few inputs, not
        # dense products over every input its region spans.
        self.row_tiles, self._row_index = (t.to(device) for t in _tiles(self.rows.cpu(), self.TILE))
        self.col_tiles, self._col_index = (t.to(device) for t in _tiles(self.cols.cpu(), self.TILE))
        # As Python ints too: block_t reads two per mask, and indexing a tensor per
        # element costs more than the lookup.
        self._col_start = self._col_index[:, 0].tolist()
        self._tile_y0 = torch.arange(len(self._row_index), device=device) * self.TILE
        self._tile_x0 = torch.arange(len(self._col_index), device=device) * self.TILE
        # Offsets of each tile's patch in a flattened (s, s) map: (n_y, n_x, Kr, Kc).
        self._patch_offsets = (
            self._row_index[:, None, :, None] * low_res + self._col_index[None, :, None, :]
        )

    def regions(self, low_res: torch.Tensor, threshold: float) -> torch.Tensor:
        """(n, s, s) logits -> (n, 4) int64 full-resolution boxes y0, y1, x0, x1
        (inclusive); y0 > y1 for a mask whose logits are all <= threshold everywhere."""
        over = low_res > threshold - self.MARGIN
        rows, cols = over.any(2), over.any(1)  # (n, s) each
        s = low_res.shape[-1]
        first_row, last_row = rows.int().argmax(1), s - 1 - rows.flip(1).int().argmax(1)
        first_col, last_col = cols.int().argmax(1), s - 1 - cols.flip(1).int().argmax(1)
        y0 = torch.searchsorted(self.row_hi, first_row.contiguous(), right=False)
        y1 = torch.searchsorted(self.row_lo, last_row.contiguous(), right=True) - 1
        x0 = torch.searchsorted(self.col_hi, first_col.contiguous(), right=False)
        x1 = torch.searchsorted(self.col_lo, last_col.contiguous(), right=True) - 1
        empty = ~rows.any(1)
        y0 = torch.where(empty, torch.ones_like(y0), y0)
        y1 = torch.where(empty, torch.zeros_like(y1), y1)
        return torch.stack([y0, y1, x0, x1], dim=1)

    def block_t(self, low_res: torch.Tensor, region: list[int]) -> torch.Tensor:
        """(s, s) logits of one mask -> its (x1 - x0 + 1, y1 - y0 + 1) logits inside
        `region` (from `regions`), transposed as `upscale_masks(transposed=True)`."""
        y0, y1, x0, x1 = region
        t = self.TILE
        ty0, ty1, tx0, tx1 = y0 // t, y1 // t, x0 // t, x1 // t
        col_start = self._col_start
        ca, cb = col_start[tx0], col_start[tx1] + self.col_tiles.shape[2]
        if low_res.dtype != self.row_tiles.dtype:
            low_res = low_res.float()
        # Rows: each tile of output rows reads its own few low-res rows.
        gathered = low_res[:, ca:cb].index_select(0, self._row_index[ty0 : ty1 + 1].flatten())
        gathered = gathered.view(ty1 - ty0 + 1, -1, cb - ca)
        by_rows = torch.bmm(self.row_tiles[ty0 : ty1 + 1], gathered)  # (ny_t, T, cb - ca)
        by_rows = by_rows.view(-1, cb - ca).T  # (cb - ca, ny_t * T)
        # Columns likewise, giving the transposed block (nx_t * T, ny_t * T).
        index = self._col_index[tx0 : tx1 + 1] - ca
        height = by_rows.shape[1]
        gathered = by_rows.index_select(0, index.flatten()).view(tx1 - tx0 + 1, -1, height)
        block = torch.bmm(self.col_tiles[tx0 : tx1 + 1], gathered).view(-1, height)
        return block[x0 - tx0 * t : x1 - tx0 * t + 1, y0 - ty0 * t : y1 - ty0 * t + 1]

    def boxes(self, low_res: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """(K, s, s) logits and their (K, 4) `regions` at threshold 0 -> (K, 4) int64
        XYXY boxes (inclusive max; zeros when empty) of the full-resolution masks
        logits > 0: the boxes of `block_t`'s blocks, for all masks at once.

        Only the tiles that a mask's edge crosses are computed (see `_tiles`).
        """
        t = self.TILE
        device = low_res.device
        out = torch.zeros((len(low_res), 4), dtype=torch.int64, device=device)
        regions = regions.to(device)
        masks = ((regions[:, 0] <= regions[:, 1]) & (regions[:, 2] <= regions[:, 3])).nonzero()
        if len(masks) == 0:
            return out
        n_y, n_x = len(self._row_index), len(self._col_index)
        step = torch.arange(t, device=device)
        for which in masks.flatten().split(max(1, _BOX_TILES // (n_y * n_x))):
            logits = low_res[which]
            tile_min, tile_max, in_region = self._tiles(logits, regions[which])
            surely_above, surely_below = self._surely(tile_min, tile_max, 0.0)
            full, edge = in_region & surely_above, in_region & ~surely_above & ~surely_below
            # Tiles with every pixel > 0: their extent within the region.
            y0, y1, x0, x1 = (r[:, None, None] for r in regions[which].unbind(1))
            ty, tx = self._tile_y0[None, :, None], self._tile_x0[None, None, :]
            big = torch.iinfo(torch.int64).max
            first_x = torch.where(full, torch.maximum(tx, x0), big).flatten(1).amin(1)
            first_y = torch.where(full, torch.maximum(ty, y0), big).flatten(1).amin(1)
            last_x = torch.where(full, torch.minimum(tx + t - 1, x1), -1).flatten(1).amax(1)
            last_y = torch.where(full, torch.minimum(ty + t - 1, y1), -1).flatten(1).amax(1)
            owner, ey, ex = edge.nonzero().unbind(1)
            if len(owner):
                # Pixels of a tile outside the region or past the image are <= 0.
                block = self._tile_blocks(logits, owner, ey, ex)  # (E, TILE x, TILE y)
                xs, ys = ex[:, None] * t + step, ey[:, None] * t + step  # (E, TILE)
                col_any, row_any = block.amax(2) > 0.0, block.amax(1) > 0.0
                (tile_first_x, tile_last_x), (tile_first_y, tile_last_y) = (
                    _extent(col_any, xs),
                    _extent(row_any, ys),
                )
                first_x = first_x.scatter_reduce(0, owner, tile_first_x, "amin")
                first_y = first_y.scatter_reduce(0, owner, tile_first_y, "amin")
                last_x = last_x.scatter_reduce(0, owner, tile_last_x, "amax")
                last_y = last_y.scatter_reduce(0, owner, tile_last_y, "amax")
            found = last_x >= 0
            out[which[found]] = torch.stack([first_x, first_y, last_x, last_y], dim=1)[found]
        return out

    def count_above(
        self, low_res: torch.Tensor, regions: torch.Tensor, thresholds: Sequence[float]
    ) -> torch.Tensor:
        """(n, s, s) logits and their (n, 4) `regions` at a threshold <= all of
        `thresholds` -> (n, len(thresholds)) int64 counts of the full-resolution
        logits above each: `block_t`'s values, counted without computing the tiles
        that are all above or all below a threshold (see `_tiles`)."""
        t, device = self.TILE, low_res.device
        counts = torch.zeros((len(low_res), len(thresholds)), dtype=torch.int64, device=device)
        regions = regions.to(device)
        # Settled tiles count whole: their pixels inside the image, (n_y, n_x).
        tile_h = (self.rows.shape[0] - self._tile_y0).clamp(max=t)
        tile_w = (self.cols.shape[0] - self._tile_x0).clamp(max=t)
        tile_pixels = tile_h[:, None] * tile_w
        rows = torch.arange(len(low_res), device=device)
        for which in rows.split(max(1, _BOX_TILES // tile_pixels.numel())):
            logits = low_res[which]
            tile_min, tile_max, in_region = self._tiles(logits, regions[which])
            settled, above = in_region, []
            for threshold in thresholds:
                surely_above, surely_below = self._surely(tile_min, tile_max, threshold)
                settled = settled & (surely_above | surely_below)
                above.append(surely_above)
            for i, surely_above in enumerate(above):
                counts[which, i] = ((settled & surely_above) * tile_pixels).flatten(1).sum(1)
            owner, ey, ex = (in_region & ~settled).nonzero().unbind(1)
            if len(owner):
                # A tile's pixels outside its region are below every threshold here;
                # those past the image's edge are exactly 0 (their weights are 0).
                block = self._tile_blocks(logits, owner, ey, ex).flatten(1)
                padding = t * t - tile_pixels[ey, ex]
                for i, threshold in enumerate(thresholds):
                    # (An int32 sum of the bools is ~2x faster than the default int64.)
                    over = (block > threshold).sum(1, dtype=torch.int32).long()
                    if threshold < 0.0:
                        over -= padding
                    counts[:, i].index_add_(0, which[owner], over)
        return counts

    def masks_t(self, low_res: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        """(n, s, s) logits and their (n, 4) `regions` at a threshold <= 0 -> (n, W, H)
        bool masks logits > 0, transposed as `block_t` (a view of masks padded to
        whole tiles): `block_t`'s values, computed only in the tiles a mask's edge
        crosses (see `_tiles`)."""
        t, device, n = self.TILE, low_res.device, len(low_res)
        n_y, n_x = len(self._row_index), len(self._col_index)
        height, width = self.rows.shape[0], self.cols.shape[0]
        if n == 0:
            return torch.zeros((0, width, height), dtype=torch.bool, device=device)
        regions = regions.to(device)
        tile_min, tile_max, in_region = self._tiles(low_res, regions)
        surely_above, surely_below = self._surely(tile_min, tile_max, 0.0)
        # Whole tiles filled at once (assigning True to them through a boolean mask
        # is far slower), then the edge tiles written into them.
        full = (in_region & surely_above).transpose(1, 2)[:, :, None, :, None]
        masks_t = full.expand(-1, -1, t, -1, t).contiguous().view(n, n_x * t, n_y * t)
        tiles = masks_t.view(n, n_x, t, n_y, t).permute(0, 1, 3, 2, 4)  # (n, n_x, n_y, x, y)
        owner, ey, ex = (in_region & ~surely_above & ~surely_below).nonzero().unbind(1)
        if len(owner):
            # Pixels of a tile outside the region are <= 0 (see `regions`).
            tiles[owner, ex, ey] = self._tile_blocks(low_res, owner, ey, ex) > 0.0
        return masks_t[:, :width, :height]

    def _surely(
        self, tile_min: torch.Tensor, tile_max: torch.Tensor, threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiles (from `_tiles`) whose every pixel is surely above `threshold`, and
        those whose every pixel is surely not."""
        if threshold == 0.0:
            return tile_min > _SURELY_POSITIVE, tile_max <= 0.0
        # Rounding moves a pixel by far less than MARGIN (see `regions`).
        return tile_min > threshold + self.MARGIN, tile_max <= threshold - self.MARGIN

    def _tiles(
        self, low_res: torch.Tensor, regions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per TILE x TILE output tile of each of n maps, (n, n_y, n_x) each: the min
        and max of its patch (the `_row_index` rows by `_col_index` columns of the
        low-res logits it is computed from), and whether it meets the map's region.

        A tile's logits are sums of non-negative weights times its patch's values, so
        where the patch is all <= 0 no pixel is > 0, and where it is all clearly > 0
        every pixel is, however the sums are rounded (likewise, with `MARGIN`, for
        other thresholds). Only the tiles in between need their pixels computed.
        """
        if low_res.dtype != self.row_tiles.dtype:
            low_res = low_res.float()
        n_y, k_r = self._row_index.shape
        n_x, k_c = self._col_index.shape
        by_rows = low_res.index_select(1, self._row_index.flatten())
        by_rows = by_rows.view(-1, n_y, k_r, low_res.shape[-1])
        # (amin and amax each vectorise over the last axis; aminmax over a middle
        # one is an order of magnitude slower.)
        row_min, row_max = by_rows.amin(2), by_rows.amax(2)
        cols = self._col_index.flatten()
        tile_min = row_min.index_select(2, cols).view(-1, n_y, n_x, k_c).amin(3)
        tile_max = row_max.index_select(2, cols).view(-1, n_y, n_x, k_c).amax(3)
        y0, y1, x0, x1 = (r[:, None, None] for r in regions.unbind(1))
        ty, tx, t = self._tile_y0[None, :, None], self._tile_x0[None, None, :], self.TILE
        in_region = (ty + t > y0) & (ty <= y1) & (tx + t > x0) & (tx <= x1)
        return tile_min, tile_max, in_region

    def _tile_blocks(
        self, low_res: torch.Tensor, owner: torch.Tensor, tile_y: torch.Tensor, tile_x: torch.Tensor
    ) -> torch.Tensor:
        """(E,) map, tile row and tile column indices -> (E, TILE, TILE) logits of
        those tiles, transposed (x, y): `block_t`'s products, all tiles at once."""
        if low_res.dtype != self.row_tiles.dtype:
            low_res = low_res.float()
        s = low_res.shape[-1]
        offsets = self._patch_offsets[tile_y, tile_x] + owner[:, None, None] * (s * s)
        patch = torch.take(low_res, offsets)  # (E, Kr, Kc)
        by_rows = torch.bmm(self.row_tiles.index_select(0, tile_y), patch)  # (E, TILE, Kc)
        return torch.bmm(self.col_tiles.index_select(0, tile_x), by_rows.transpose(1, 2))


def _extent(found: torch.Tensor, at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, n) bool and (E, n) int64 positions -> (E,) first and last position where
    `found`, int64 max and -1 where nowhere."""
    big = torch.iinfo(torch.int64).max
    return torch.where(found, at, big).amin(1), torch.where(found, at, -1).amax(1)


# Patch values above this give pixels > 0 however they are summed: each output pixel
# takes at least a third of some patch value, twice, far from float32's underflow.
_SURELY_POSITIVE = 1e-6
# Tiles of TILE x TILE pixels looked at per pass of `RegionUpscaler.boxes` and
# `count_above`: bounds their memory (the computed ones, at most all, take 4 KB each).
_BOX_TILES = 16384


def _tiles(matrix: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) banded matrix -> (n, tile, K) blocks of `tile` consecutive output rows
    over the K consecutive inputs they draw on, and (n, K) int64 indices of those
    inputs; rows past `out` are zero."""
    out, n_in = matrix.shape
    first, last = _support(matrix)
    n = -(-out // tile)
    lo = first[::tile]
    hi = last[torch.clamp(torch.arange(n) * tile + tile - 1, max=out - 1)]
    k = int((hi - lo).max()) + 1
    start = torch.clamp(lo, max=n_in - k)
    index = start[:, None] + torch.arange(k)
    padded = torch.zeros(n * tile, n_in, dtype=matrix.dtype, device=matrix.device)
    padded[:out] = matrix
    blocks = padded.view(n, tile, n_in).gather(2, index[:, None, :].expand(n, tile, k))
    return blocks.contiguous(), index


def _support(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) non-negative matrix -> first and last non-zero column of each row."""
    nonzero = matrix > 0
    n = matrix.shape[1]
    first = nonzero.int().argmax(1)
    last = n - 1 - nonzero.flip(1).int().argmax(1)
    return first.contiguous(), last.contiguous()
