"""Automatic mask generation: prompt SAM with a grid of points over the image and
over zoomed crops, keep confident and stable masks, and remove duplicates.

Same parameters, defaults, order of operations and records as the reference
`SamAutomaticMaskGenerator`, computed with less waste:
- masks are filtered by predicted IoU on the decoder's low-resolution output,
  before anything is upsampled;
- full-resolution logits are computed only in the tiles a mask's edge crosses
  (`RegionUpscaler`): stability counts, boxes and masks read the other tiles
  whole from the low-res logits;
- the decoder's prompt-independent work is done once per crop (SamPredictor);
- masks cost their stability counts and box until the per-crop NMS; only the ones
  it keeps are binarised and RLE-encoded (memory bounded per crop);
- results are gathered in lists and concatenated once per crop.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from . import mask_ops
from .predictor import ImageEmbedding, SamPredictor
from .preprocess import RegionUpscaler
from .sam import Sam

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
PROMPT_MODES = ("exact", "adaptive")
# 1024 x 1024 = 1M prompts per crop (16k decoder batches of 64): far past any use.
MAX_POINTS_PER_SIDE = 1024
_EDGE_TOLERANCE_PX = 20.0
# Bounds the full-resolution masks held at once while scoring them: a chunk holds as many
# masks as this budget holds float32 maps of the crop (bytes).
_LOGIT_BUDGET_BYTES = 64 << 20
# Bounds the low-res logits of one crop's candidates held until its NMS (bytes): past it,
# the candidates held so far are scored and encoded at once, as with a stability filter.
_PENDING_BUDGET_BYTES = 256 << 20


class _Rows:
    """Rows of a dataclass whose fields are all (K, ...) tensors or length-K lists."""

    def __len__(self) -> int:
        return len(self.predicted_iou)

    def select(self, keep: torch.Tensor):
        """The rows `keep` ((k,) int64 indices), in that order."""
        idx = keep.cpu().tolist()
        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                fields[f.name] = [value[i] for i in idx]
            else:
                fields[f.name] = value[keep.to(value.device)]
        return type(self)(**fields)

    @classmethod
    def cat(cls, parts: Sequence):
        fields = {}
        for f in dataclasses.fields(cls):
            values = [getattr(p, f.name) for p in parts]
            if isinstance(values[0], list):
                fields[f.name] = [v for value in values for v in value]
            else:
                fields[f.name] = torch.cat(values)
        return cls(**fields)


@dataclasses.dataclass
class _Masks(_Rows):
    """Candidate masks (K of them) in image coordinates, RLE-encoded.

    rles: compressed COCO RLE dicts (str counts); areas: (K,) int64 pixels; boxes:
    (K, 4) int64 XYXY, inclusive max; predicted_iou, stability_score: (K,) float32;
    points: (K, 2) float64 xy; crop_boxes: (K, 4) int64 XYXY.
    """

    rles: list[dict]
    areas: torch.Tensor
    boxes: torch.Tensor
    predicted_iou: torch.Tensor
    stability_score: torch.Tensor
    points: torch.Tensor
    crop_boxes: torch.Tensor


@dataclasses.dataclass
class _Candidates(_Rows):
    """Masks of one crop that passed the filters, not yet encoded (K of them).

    logits: (K, s, s) float32 low-res logits; regions: (K, 4) int64, per mask the
    full-resolution box y0, y1, x0, x1 (inclusive) outside of which no logit passes a
    threshold (see `RegionUpscaler.regions`); boxes: (K, 4) int64 XYXY of the mask
    (crop pixels, inclusive max); predicted_iou: (K,) float32; points: (K, 2) float64 xy.
    """

    logits: torch.Tensor
    regions: torch.Tensor
    boxes: torch.Tensor
    predicted_iou: torch.Tensor
    points: torch.Tensor


@functools.lru_cache(maxsize=32)
def _region_upscaler(
    low_res: int,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
    device: torch.device,
) -> RegionUpscaler:
    """One RegionUpscaler per crop geometry (the crops of a layer share it)."""
    return RegionUpscaler(low_res, input_size, original_size, image_size, device)


def _logit_bytes(part: _Masks | _Candidates) -> int:
    """Bytes of low-res logits a part holds until the NMS (only `_Candidates` do)."""
    if isinstance(part, _Candidates):
        return part.logits.nelement() * part.logits.element_size()
    return 0


def _encode_column_major(masks_t: torch.Tensor, nonempty: torch.Tensor) -> list[dict]:
    """`mask_ops.coco_encode_column_major` of (n, W, H) masks, where the (n,) bool
    `nonempty` says which hold any pixel: empty ones (many, at low thresholds) get the
    one empty RLE of their size instead of a pass over every pixel."""
    rles: list[dict | None] = [None] * len(masks_t)
    which = nonempty.nonzero().flatten().tolist()
    for i, rle in zip(which, mask_ops.coco_encode_column_major(masks_t[nonempty])):
        rles[i] = rle
    if len(which) < len(rles):
        (empty,) = mask_ops.coco_encode_column_major(masks_t.new_zeros((1, *masks_t.shape[1:])))
        rles = [rle if rle is not None else dict(empty) for rle in rles]
    return rles


def check_params(
    points_per_side: int | None = 32,
    points_per_batch: int = 64,
    crop_n_layers: int = 0,
    crop_overlap_ratio: float = 512 / 1500,
    crop_n_points_downscale_factor: int = 1,
    min_mask_region_area: int = 0,
    encoder_batch_size: int = 4,
    prompt_mode: str = "exact",
    adaptive_stride: int = 4,
    adaptive_radius: int = 2,
    **thresholds: float,
) -> None:
    """Raise ValueError, naming the parameter, for values the generator cannot run with.

    Takes AutomaticMaskGenerator's keyword names; the score and NMS thresholds
    (`thresholds`) accept any float, as in the reference.
    """
    at_least = {
        "points_per_batch": (points_per_batch, 1),
        "crop_n_layers": (crop_n_layers, 0),
        "crop_n_points_downscale_factor": (crop_n_points_downscale_factor, 1),
        "min_mask_region_area": (min_mask_region_area, 0),
        "encoder_batch_size": (encoder_batch_size, 1),
        "adaptive_stride": (adaptive_stride, 1),
        "adaptive_radius": (adaptive_radius, 0),
    }
    if points_per_side is not None:
        at_least["points_per_side"] = (points_per_side, 1)
        if points_per_side > MAX_POINTS_PER_SIDE:
            grid_gb = points_per_side**2 * 16 / 1e9  # float64 xy per point, per crop layer
            raise ValueError(
                f"points_per_side must be <= {MAX_POINTS_PER_SIDE}, got {points_per_side} "
                f"({points_per_side**2:,} prompts per crop, {grid_gb:,.1f} GB for the "
                f"point grid alone)"
            )
    if prompt_mode not in PROMPT_MODES:
        raise ValueError(f"prompt_mode must be one of {PROMPT_MODES}, got {prompt_mode!r}")
    for name, (value, low) in at_least.items():
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if not 0.0 <= crop_overlap_ratio < 1.0:
        raise ValueError(f"crop_overlap_ratio must be in [0, 1), got {crop_overlap_ratio}")


class AutomaticMaskGenerator:
    """SAM's automatic mask generator (parameters as in the reference).

    points_per_side: grid points per side of each crop (layer i uses
        points_per_side / crop_n_points_downscale_factor**i); or point_grids,
        explicit (n, 2) grids in [0, 1] per crop layer.
    points_per_batch: prompts per decoder call (memory/speed only).
    pred_iou_thresh: keep masks whose predicted IoU is > this.
    stability_score_thresh: keep masks whose stability score is >= this, the
        score being computed with thresholds 0 +- stability_score_offset.
    box_nms_thresh: box IoU above which the lower-IoU mask of a crop is dropped.
    crop_n_layers, crop_nms_thresh, crop_overlap_ratio: zoomed crops; across crops
        the mask from the smaller crop wins.
    min_mask_region_area: if > 0, fill holes and drop islands smaller than this
        (pixels), then NMS again preferring unchanged masks.
    output_mode: "binary_mask" ((H, W) bool ndarray), "uncompressed_rle" or
        "coco_rle" (pycocotools dict with str counts).
    precision: "fp32" (exact), "bf16", or "auto" (bf16 where the hardware runs it fast;
        `self.precision` is the one chosen).
    encoder_batch_size: crops encoded per encoder call in generate_batch.
    prompt_mode: "exact" (the reference's grid, every point decoded) or "adaptive"
        (beyond the reference; needs points_per_side): each crop's grid is decoded
        from a coarse sub-grid (every `adaptive_stride`-th point per side) outwards:
        a grid point is decoded when a decoded point within `adaptive_radius` grid
        steps (per axis) produced a mask that passed the filters, until no such point
        is left. Masks are the exact mode's for the points decoded; same filters and
        NMS. `prompts_decoded` holds the point prompts decoded per image by the last
        call.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        precision: str = "fp32",
        encoder_batch_size: int = 4,
        prompt_mode: str = "exact",
        adaptive_stride: int = 4,
        adaptive_radius: int = 2,
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side and point_grids")
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        check_params(
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            crop_n_layers=crop_n_layers,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area,
            encoder_batch_size=encoder_batch_size,
            prompt_mode=prompt_mode,
            adaptive_stride=adaptive_stride,
            adaptive_radius=adaptive_radius,
        )
        if prompt_mode == "adaptive" and point_grids is not None:
            raise ValueError(
                "prompt_mode 'adaptive' needs points_per_side (a regular grid), not point_grids"
            )
        if points_per_side is not None:
            point_grids = mask_ops.build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        elif len(point_grids) != crop_n_layers + 1:
            raise ValueError(
                f"point_grids has {len(point_grids)} grids; crop_n_layers={crop_n_layers} "
                f"needs {crop_n_layers + 1}"
            )
        self.predictor = SamPredictor(model, precision)
        self.point_grids = [np.asarray(g, dtype=np.float64) for g in point_grids]
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        self.encoder_batch_size = encoder_batch_size
        self.prompt_mode = prompt_mode
        self.adaptive_stride = adaptive_stride
        self.adaptive_radius = adaptive_radius
        # Point prompts decoded per image by the last generate_batch call.
        self.prompts_decoded: list[int] = []

    @property
    def precision(self) -> str:
        """The precision the predictor runs in ("auto" resolved)."""
        return self.predictor.precision

    def generate(self, image: np.ndarray) -> list[dict]:
        """Masks of one (H, W, 3) uint8 RGB image, as records (see `generate_batch`)."""
        return self.generate_batch([image])[0]

    def generate_batch(
        self, images: Sequence[np.ndarray], embeddings_out: list | None = None
    ) -> list[list[dict]]:
        """Masks of several images; the crops of all images share encoder batches.

        Each record: segmentation (per output_mode), area (px), bbox XYWH,
        predicted_iou, point_coords [[x, y]], stability_score, crop_box XYWH.
        If `embeddings_out` is a list, each image's whole-image `ImageEmbedding`
        (crop layer 0, computed anyway) is appended to it, in image order.
        """
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"expected (H, W, 3) uint8 RGB images, got {image.shape} {image.dtype}"
                )
        jobs = []  # (image index, crop box XYXY, crop layer)
        for i, image in enumerate(images):
            boxes, layers = mask_ops.generate_crop_boxes(
                image.shape[:2], self.crop_n_layers, self.crop_overlap_ratio
            )
            jobs.extend((i, box, layer) for box, layer in zip(boxes, layers))

        per_image: list[list[_Masks]] = [[] for _ in images]
        prompts = [0] * len(images)
        whole_image: dict[int, ImageEmbedding] = {}
        for start in range(0, len(jobs), self.encoder_batch_size):
            chunk = jobs[start : start + self.encoder_batch_size]
            crops = [images[i][y0:y1, x0:x1] for i, (x0, y0, x1, y1), _ in chunk]
            embeddings = self.predictor.encode(crops)
            for (i, box, layer), embedding in zip(chunk, embeddings):
                masks, decoded = self._crop_masks(embedding, box, layer, images[i].shape[:2])
                per_image[i].append(masks)
                prompts[i] += decoded
                if layer == 0 and embeddings_out is not None:
                    embedding.decoder_caches.clear()  # only the features are kept
                    whole_image[i] = embedding
            del embeddings
        if embeddings_out is not None:
            embeddings_out.extend(whole_image[i] for i in range(len(images)))
        self.prompts_decoded = prompts
        return [self._finish(parts, len(parts)) for parts in per_image]

    def _finish(self, parts: list[_Masks], n_crops: int) -> list[dict]:
        """Cross-crop NMS, small-region cleanup and records for one image."""
        data = _Masks.cat(parts)
        if n_crops > 1 and len(data.rles):
            crop_area = (data.crop_boxes[:, 2] - data.crop_boxes[:, 0]) * (
                data.crop_boxes[:, 3] - data.crop_boxes[:, 1]
            )
            keep = mask_ops.batched_box_nms(
                data.boxes.float(),
                1.0 / crop_area.float(),
                torch.zeros(len(data.rles), dtype=torch.int64, device=data.boxes.device),
                self.crop_nms_thresh,
            )
            data = data.select(keep)
        if self.min_mask_region_area > 0 and len(data.rles):
            data = self._remove_small_regions(data)
        return self._records(data)

    @torch.inference_mode()
    def _crop_masks(
        self,
        embedding: ImageEmbedding,
        crop_box: list[int],
        layer: int,
        image_size: tuple[int, int],
    ) -> tuple[_Masks, int]:
        """All masks of one crop after the per-crop NMS, in image coordinates, and the
        number of point prompts decoded for it."""
        crop_h, crop_w = embedding.original_size
        scale = np.array([[crop_w, crop_h]], dtype=np.float64)
        points = self.point_grids[layer] * scale
        if self.prompt_mode == "exact":
            parts, _ = self._decode_points(embedding, points, crop_box, image_size)
            decoded = len(points)
        else:
            parts, decoded = self._decode_adaptively(embedding, points, crop_box, image_size)
        data = self._crop_nms(parts, embedding, crop_box, image_size)
        data.boxes = mask_ops.uncrop_boxes_xyxy(data.boxes, crop_box)
        data.points = mask_ops.uncrop_points(data.points, crop_box)
        return data, decoded

    def _decode_adaptively(
        self,
        embedding: ImageEmbedding,
        points: np.ndarray,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> tuple[list[_Masks | _Candidates], int]:
        """The adaptive mode's masks of one crop's (n*n, 2) grid (row by row, x fastest),
        before NMS, and the number of points decoded.

        Rounds: the coarse sub-grid first; then every undecoded point within
        `adaptive_radius` steps of a point whose masks passed the filters. The points
        are a subset of the grid, so every mask is one the exact mode also considers.
        """
        side = round(len(points) ** 0.5)
        stride, radius = min(self.adaptive_stride, side), self.adaptive_radius
        start = (stride - 1) // 2  # the sub-grid point nearest the centre of its block
        frontier = torch.zeros(side, side, dtype=torch.bool)
        frontier[start::stride, start::stride] = True
        decoded = torch.zeros_like(frontier)
        producing = torch.zeros_like(frontier)
        parts: list[_Masks | _Candidates] = []
        while frontier.any():
            batch = frontier.flatten().nonzero().flatten().numpy()
            parts, produced = self._decode_points(
                embedding, points[batch], crop_box, image_size, parts
            )
            decoded |= frontier
            producing.view(-1)[torch.from_numpy(batch[produced])] = True
            near = F.max_pool2d(
                producing[None, None].float(), 2 * radius + 1, stride=1, padding=radius
            )[0, 0].bool()
            frontier = near & ~decoded
        return parts, int(decoded.sum())

    def _crop_nms(
        self,
        parts: list[_Masks | _Candidates],
        embedding: ImageEmbedding,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> _Masks:
        """The per-crop NMS over the parts of one crop, in their order; only the
        candidates it keeps are scored and encoded. Rows come out in NMS rank order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            device = embedding.features.device
            return _Masks(
                rles=[],
                areas=torch.zeros(0, dtype=torch.int64, device=device),
                boxes=torch.zeros((0, 4), dtype=torch.int64, device=device),
                predicted_iou=torch.zeros(0, device=device),
                stability_score=torch.zeros(0, device=device),
                points=torch.zeros((0, 2), dtype=torch.float64),
                crop_boxes=torch.zeros((0, 4), dtype=torch.int64, device=device),
            )
        boxes = torch.cat([p.boxes for p in parts])
        scores = torch.cat([p.predicted_iou for p in parts])
        keep = mask_ops.batched_box_nms(
            boxes.float(),
            scores,
            torch.zeros(len(scores), dtype=torch.int64, device=boxes.device),
            self.box_nms_thresh,
        )
        # Global row -> (part, row in part); each part keeps its rows in rank order.
        starts = np.cumsum([0] + [len(p) for p in parts])
        which_part = np.searchsorted(starts, keep.cpu().numpy(), side="right") - 1
        kept_parts, positions, offset = [], np.empty(len(keep), dtype=np.int64), 0
        for i, part in enumerate(parts):
            ranks = np.flatnonzero(which_part == i)
            local = torch.from_numpy(keep.cpu().numpy()[ranks] - starts[i])
            selected = part.select(local)
            if isinstance(selected, _Candidates):
                selected = self._encode_candidates(selected, embedding, crop_box, image_size)
            kept_parts.append(selected)
            positions[ranks] = offset + np.arange(len(ranks))
            offset += len(ranks)
        return _Masks.cat(kept_parts).select(torch.from_numpy(positions))

    def _decode_points(
        self,
        embedding: ImageEmbedding,
        points: np.ndarray,
        crop_box: list[int],
        image_size: tuple[int, int],
        parts: list[_Masks | _Candidates] | None = None,
    ) -> tuple[list[_Masks | _Candidates], np.ndarray]:
        """Masks of (n, 2) xy point prompts (crop pixels), filtered, before NMS, appended
        to the crop's `parts` so far; and which points produced at least one of them
        ((n,) bool).

        Masks stay `_Candidates`, up to `_PENDING_BUDGET_BYTES` of them in all the
        crop's parts: the NMS needs only their boxes, so only the ones it keeps are
        encoded.
        """
        labels = np.ones((len(points), 1), dtype=np.int64)
        produced = np.zeros(len(points), dtype=bool)
        parts = [] if parts is None else parts
        pending_bytes = sum(_logit_bytes(p) for p in parts)
        if len(points) == 0:
            return parts, produced
        index = {tuple(p): i for i, p in enumerate(points.tolist())}
        for prompts, batch in self.predictor.iter_decode(
            embedding,
            points[:, None, :],
            labels,
            multimask_output=True,
            batch_size=self.points_per_batch,
            min_iou=self.pred_iou_thresh if self.pred_iou_thresh > 0.0 else None,
        ):
            computed = batch.computed.cpu().numpy()
            part = self._filter_batch(
                embedding,
                batch.low_res_logits,
                batch.iou_predictions[batch.computed],
                points[prompts][computed],
                crop_box,
                image_size,
            )
            parts.append(part)
            produced[[index[tuple(p)] for p in part.points.tolist()]] = True
            if isinstance(part, _Candidates):
                pending_bytes += _logit_bytes(part)
                if pending_bytes > _PENDING_BUDGET_BYTES:
                    parts = [
                        self._encode_candidates(p, embedding, crop_box, image_size)
                        if isinstance(p, _Candidates)
                        else p
                        for p in parts
                    ]
                    pending_bytes = 0
        return parts, produced

    def _upscaler(self, embedding: ImageEmbedding, low_res: int) -> RegionUpscaler:
        return _region_upscaler(
            low_res,
            tuple(embedding.input_size),
            tuple(embedding.original_size),
            self.predictor.model.image_size,
            self.predictor.device,
        )

    def _chunks(
        self, upscaler: RegionUpscaler, logits: torch.Tensor, regions: torch.Tensor
    ) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Full-resolution masks of (K, s, s) logits, a bounded chunk at a time.

        Yields (rows, masks_t, stability, nonempty): the chunk's rows of `logits`,
        (n, W, H) bool masks (transposed: the column-major order pycocotools
        encodes), (n,) float32 stability scores and (n,) bool "has a pixel".
        """
        offset = self.stability_score_offset
        crop_w, crop_h = upscaler.cols.shape[0], upscaler.rows.shape[0]
        # Edge tiles are float32, 4 bytes a pixel at most; the masks take 1.
        chunk = max(1, _LOGIT_BUDGET_BYTES // (4 * crop_h * crop_w))
        for start in range(0, len(logits), chunk):
            rows = slice(start, start + chunk)
            counts = upscaler.count_above(logits[rows], regions[rows], (0.0, offset, -offset))
            # An empty region counts nothing: stability 0 / 0 (NaN), an empty mask.
            score = mask_ops.stability_from_counts(counts[:, 1], counts[:, 2])
            masks_t = upscaler.masks_t(logits[rows], regions[rows])
            yield slice(start, start + len(masks_t)), masks_t, score, counts[:, 0] > 0

    def _image_rles(
        self,
        masks_t: torch.Tensor,
        nonempty: torch.Tensor,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> list[dict]:
        """RLEs in the image frame of (n, W, H) transposed crop masks, of which the
        (n,) bool `nonempty` hold a pixel."""
        image_h, image_w = image_size
        x0, y0, x1, y1 = crop_box
        if [x0, y0, x1, y1] == [0, 0, image_w, image_h]:
            return _encode_column_major(masks_t, nonempty)
        # Zero-pad the transposed masks into the image frame: W axis, then H.
        pad = (y0, image_h - y1, x0, image_w - x1)
        return mask_ops.coco_encode_column_major(F.pad(masks_t, pad))

    def _encode_candidates(
        self,
        candidates: _Candidates,
        embedding: ImageEmbedding,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> _Masks:
        """Stability scores, RLEs (image frame) and areas of candidates, in their order."""
        upscaler = self._upscaler(embedding, candidates.logits.shape[-1])
        rles, stability = [], []
        for _, masks_t, score, nonempty in self._chunks(
            upscaler, candidates.logits, candidates.regions
        ):
            rles.extend(self._image_rles(masks_t, nonempty, crop_box, image_size))
            stability.append(score)
        device = candidates.boxes.device
        return _Masks(
            rles=rles,
            areas=torch.from_numpy(mask_ops.rle_areas(rles)).to(device),
            boxes=candidates.boxes,
            predicted_iou=candidates.predicted_iou,
            stability_score=torch.cat(stability) if stability else candidates.predicted_iou[:0],
            points=candidates.points,
            crop_boxes=torch.tensor([crop_box], device=device).expand(len(rles), 4),
        )

    def _filter_batch(
        self,
        embedding: ImageEmbedding,
        low_res: torch.Tensor,
        iou: torch.Tensor,
        points: np.ndarray,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> _Candidates:
        """Filter one decoder batch: (b, 3, s, s) logits, (b, 3) IoU, (b, 2) points.

        The masks passing the predicted-IoU, stability and crop-edge filters, as
        `_Candidates` (boxes in crop coordinates): not encoded until the NMS keeps them.
        """
        device = low_res.device
        masks_per_point = low_res.shape[1]
        low_res = low_res.flatten(0, 1)
        iou = iou.flatten()
        point_xy = torch.from_numpy(np.repeat(points, masks_per_point, axis=0))
        keep = torch.arange(len(iou), device=device)
        if self.pred_iou_thresh > 0.0:
            keep = keep[iou[keep] > self.pred_iou_thresh]

        image_h, image_w = image_size
        frame = [0, 0, image_w, image_h]
        upscaler = self._upscaler(embedding, low_res.shape[-1])
        offset = self.stability_score_offset
        # float32 in both precisions: restricted to each mask's region the products are
        # small, where bf16 saves nothing and its conversions cost time.
        # Without an IoU filter every mask is a candidate: no copy of the batch's logits.
        candidates = (low_res[keep] if self.pred_iou_thresh > 0.0 else low_res).float()
        # Outside its region a mask's logits are <= every threshold used below (the mask
        # at 0, the stability score's 0 +- offset), so they count nowhere.
        regions = upscaler.regions(candidates, min(0.0, -offset, offset))
        if self.stability_score_thresh > 0.0:
            counts = upscaler.count_above(candidates, regions, (offset, -offset))
            score = mask_ops.stability_from_counts(counts[:, 0], counts[:, 1])
            stable = (score >= self.stability_score_thresh).nonzero().flatten()
            candidates, regions, keep = candidates[stable], regions[stable], keep[stable]
        # A box needs only the pixels > 0: a region at threshold 0, often smaller.
        boxes = upscaler.boxes(candidates, upscaler.regions(candidates, 0.0)).cpu()
        inside = ~mask_ops.is_box_near_crop_edge(boxes, crop_box, frame, _EDGE_TOLERANCE_PX)
        rows = inside.nonzero().flatten().to(device)
        return _Candidates(
            logits=candidates[rows],
            regions=regions[rows],
            boxes=boxes[rows.cpu()].to(device),
            predicted_iou=iou[keep[rows]],
            points=point_xy[keep[rows].cpu()],
        )

    def _remove_small_regions(self, data: _Masks) -> _Masks:
        """Fill small holes, drop small islands, then NMS preferring unchanged masks."""
        area = self.min_mask_region_area
        rles, boxes, areas, unchanged = [], [], [], []
        for rle in data.rles:
            mask = mask_utils.decode(rle).astype(bool)
            mask, holes_changed = mask_ops.remove_small_regions(mask, area, "holes")
            mask, islands_changed = mask_ops.remove_small_regions(mask, area, "islands")
            changed = holes_changed or islands_changed
            tensor = torch.from_numpy(mask)[None]
            rles.append(mask_ops.coco_encode(tensor)[0] if changed else rle)
            boxes.append(mask_ops.masks_to_boxes(tensor)[0])
            areas.append(int(mask.sum()))
            unchanged.append(0.0 if changed else 1.0)
        boxes_t = torch.stack(boxes).to(data.boxes.device)
        scores = torch.tensor(unchanged, device=boxes_t.device)
        keep = mask_ops.batched_box_nms(
            boxes_t.float(),
            scores,
            torch.zeros(len(rles), dtype=torch.int64, device=boxes_t.device),
            max(self.box_nms_thresh, self.crop_nms_thresh),
        )
        data = dataclasses.replace(
            data, rles=rles, boxes=boxes_t, areas=torch.tensor(areas, device=boxes_t.device)
        )
        return data.select(keep)

    def _records(self, data: _Masks) -> list[dict]:
        boxes = mask_ops.box_xyxy_to_xywh(data.boxes).cpu().tolist()
        crop_boxes = mask_ops.box_xyxy_to_xywh(data.crop_boxes).cpu().tolist()
        iou = data.predicted_iou.cpu().tolist()
        stability = data.stability_score.cpu().tolist()
        points = data.points.cpu().tolist()
        areas = data.areas.cpu().tolist()
        records = []
        for i, rle in enumerate(data.rles):
            if self.output_mode == "coco_rle":
                segmentation = rle
            else:
                mask = mask_utils.decode(rle).astype(bool)
                if self.output_mode == "binary_mask":
                    segmentation = mask
                else:
                    segmentation = mask_ops.masks_to_rle(torch.from_numpy(mask)[None])[0]
            records.append(
                {
                    "segmentation": segmentation,
                    "area": int(areas[i]),
                    "bbox": boxes[i],
                    "predicted_iou": iou[i],
                    "point_coords": [points[i]],
                    "stability_score": stability[i],
                    "crop_box": crop_boxes[i],
                }
            )
        return records
