"""Batched prediction: encode several images in one encoder call, then decode any
number of prompts per image in batches."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .denormals import flush_denormals
from .precision import resolve_precision
from .preprocess import (
    boxes_to_input_frame,
    coords_to_input_frame,
    interpolate_masks,
    normalize_and_pad,
    resize_longest_side,
)
from .sam import Sam
from .transformer import ImageCache

# Prompts per mask-decoder call inside a batch (peak memory, not results).
_DECODER_CHUNK = 16


@dataclasses.dataclass
class ImageEmbedding:
    """One encoded image.

    features: (C, h, w) float32 image embedding.
    original_size: (H, W) of the image given to `encode`.
    input_size: (h, w) of the resized image inside the padded encoder input.
    """

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    # Prompt-independent decoder tensors, per precision, filled on first use.
    decoder_caches: dict[str, ImageCache] = dataclasses.field(default_factory=dict, repr=False)


@dataclasses.dataclass
class Prediction:
    """Decoder output for B prompts with M masks each.

    masks: (B, M, H, W) bool, or float32 logits if return_logits.
    iou_predictions: (B, M) float32.
    low_res_logits: (B, M, s, s) float32 (s = 256 for the official models).
    """

    masks: torch.Tensor
    iou_predictions: torch.Tensor
    low_res_logits: torch.Tensor


@dataclasses.dataclass
class DecodedBatch:
    """Decoder output for b prompts with M masks each.

    iou_predictions: (b, M) float32 for every prompt of the batch.
    low_res_logits: (k, M, s, s) float32 for the prompts in `computed` ((k,) int64
        indices into the batch): all of them unless a minimum IoU was given.
    """

    iou_predictions: torch.Tensor
    low_res_logits: torch.Tensor
    computed: torch.Tensor


def _as_tensor(x: np.ndarray | torch.Tensor | None, dtype: torch.dtype, device: torch.device):
    if x is None:
        return None
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(
        device=device, dtype=dtype
    )


class SamPredictor:
    """Runs a `Sam` model on images and prompts.

    precision: "fp32" computes exactly what the original model computes; "bf16"
    runs the encoder under bfloat16 autocast and the mask decoder's work on the
    image tokens (hw per prompt: the large GEMMs, softmaxes, LayerNorms and the
    upscaling) in bfloat16 (AMX on recent CPUs, tensor cores on CUDA), and returns
    float32 outputs. The prompt tokens (a few per prompt) stay in float32, at no
    measurable cost: in bfloat16 their rounding moved mask boundaries (on the
    trained model, 93.3% of masks at IoU >= 0.95 with fp32 against 96.5%).
    Autocast is not used in the decoder: it is mostly elementwise work on large
    tensors, where mixed float32/bfloat16 operands cost more than they save.
    "auto": bf16 where the model's device runs it fast (sam_core.precision), else fp32;
    `self.precision` is the one chosen.
    """

    def __init__(self, model: Sam, precision: str = "fp32") -> None:
        precision = resolve_precision(precision, next(model.parameters()).device)
        self.model = model
        self.precision = precision
        self.decoder_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.mask_decoder = model.mask_decoder
        if precision == "bf16":
            # Only the modules applied to image tokens get bfloat16 weights.
            self.mask_decoder = copy.deepcopy(model.mask_decoder)
            self.mask_decoder.output_upscaling.to(self.decoder_dtype)
            for layer in self.mask_decoder.transformer.layers:
                layer.norm4.to(self.decoder_dtype)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def prepare(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(H, W, 3) uint8 RGB images -> (B, 3, S, S) encoder input and resized sizes."""
        size = self.model.image_size
        resized = [resize_longest_side(np.ascontiguousarray(im), size) for im in images]
        tensors = [torch.from_numpy(r).to(self.device).permute(2, 0, 1) for r in resized]
        return normalize_and_pad(tensors, size), [r.shape[:2] for r in resized]

    @torch.inference_mode()
    def encode(self, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
        """Encode (H, W, 3) uint8 RGB images of any sizes in one encoder call."""
        if len(images) == 0:
            return []
        flush_denormals()
        batch, input_sizes = self.prepare(images)
        with self.autocast():
            features = self.model.image_encoder(batch)
        features = features.float()
        return [
            ImageEmbedding(features[i], tuple(im.shape[:2]), tuple(input_sizes[i]))
            for i, im in enumerate(images)
        ]

    def decoder_cache(self, embedding: ImageEmbedding) -> ImageCache:
        """Prompt-independent decoder tensors of an image (no mask prompt), cached."""
        cache = embedding.decoder_caches.get(self.precision)
        if cache is None:
            pe, dtype = self.model.prompt_encoder, self.decoder_dtype
            src = embedding.features.unsqueeze(0) + pe.no_mask_dense()
            cache = self.mask_decoder.image_cache(src.to(dtype), pe.dense_pe().to(dtype))
            embedding.decoder_caches[self.precision] = cache
        return cache

    def _decode_batch(
        self,
        embedding: ImageEmbedding,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_inputs: torch.Tensor | None,
        multimask_output: bool,
        min_iou: float | None,
    ) -> DecodedBatch:
        model, decoder, dtype = self.model, self.mask_decoder, self.decoder_dtype
        points = (coords, labels) if coords is not None else None
        sparse, dense = model.prompt_encoder(points, boxes, mask_inputs)
        ious, low_res, computed = [], [], []
        # The transformer holds a few (prompts, hw, C) tensors at once (4 MB per prompt
        # each in fp32 for hw = 4096): sub-batches bound that whatever the batch size.
        for start in range(0, sparse.shape[0], _DECODER_CHUNK):
            part = slice(start, start + _DECODER_CHUNK)
            if mask_inputs is None:
                tokens, keys = decoder.decode_tokens(
                    None, None, sparse[part], None, self.decoder_cache(embedding)
                )
            else:
                tokens, keys = decoder.decode_tokens(
                    embedding.features.unsqueeze(0).to(dtype),
                    model.prompt_encoder.dense_pe().to(dtype),
                    sparse[part],
                    dense[part].to(dtype),
                )
            iou = decoder.predict_iou(tokens, multimask_output).float()
            chosen = torch.arange(len(iou), device=iou.device)
            if min_iou is not None:
                # Masks of prompts none of whose outputs can pass are never upscaled.
                chosen = chosen[(iou > min_iou).any(dim=1)]
                tokens = tokens[chosen]
                keys = keys if keys.shape[0] == 1 else keys[chosen]
            low_res.append(decoder.predict_masks(tokens, keys, multimask_output).float())
            ious.append(iou)
            computed.append(chosen + start)
            del tokens, keys
        return DecodedBatch(torch.cat(ious), torch.cat(low_res), torch.cat(computed))

    def iter_decode(
        self,
        embedding: ImageEmbedding,
        point_coords: np.ndarray | torch.Tensor | None = None,
        point_labels: np.ndarray | torch.Tensor | None = None,
        boxes: np.ndarray | torch.Tensor | None = None,
        mask_inputs: np.ndarray | torch.Tensor | None = None,
        multimask_output: bool = True,
        batch_size: int = 64,
        min_iou: float | None = None,
    ) -> Iterator[tuple[slice, DecodedBatch]]:
        """Decode prompts in batches; yields (prompt slice, DecodedBatch).

        Arguments as in `predict`. With `min_iou`, mask logits are computed only for
        the prompts with at least one predicted IoU > min_iou.
        """
        flush_denormals()
        device = self.device
        coords = _as_tensor(point_coords, torch.float32, device)
        labels = _as_tensor(point_labels, torch.int64, device)
        box_t = _as_tensor(boxes, torch.float32, device)
        masks_t = _as_tensor(mask_inputs, torch.float32, device)
        count = self._check_prompts(coords, labels, box_t, masks_t)
        size = self.model.image_size
        if coords is not None:
            coords = coords_to_input_frame(coords, embedding.original_size, size)
        if box_t is not None:
            box_t = boxes_to_input_frame(box_t, embedding.original_size, size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        with torch.inference_mode():
            for start in range(0, count, batch_size):
                part = slice(start, min(start + batch_size, count))
                yield (
                    part,
                    self._decode_batch(
                        embedding,
                        None if coords is None else coords[part],
                        None if labels is None else labels[part],
                        None if box_t is None else box_t[part],
                        None if masks_t is None else masks_t[part],
                        multimask_output,
                        min_iou,
                    ),
                )

    def predict(
        self,
        embedding: ImageEmbedding,
        point_coords: np.ndarray | torch.Tensor | None = None,
        point_labels: np.ndarray | torch.Tensor | None = None,
        boxes: np.ndarray | torch.Tensor | None = None,
        mask_inputs: np.ndarray | torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        batch_size: int = 64,
    ) -> Prediction:
        """Masks for B prompts on one encoded image.

        point_coords: (B, N, 2) xy in original-image pixels; point_labels: (B, N)
            1 foreground, 0 background, -1 ignored.
        boxes: (B, 4) XYXY in original-image pixels.
        mask_inputs: (B, 1, s, s) low-res logits, e.g. a previous low_res_logits.
        At least one of the three; all given must agree on B.
        """
        low_res_parts, iou_parts, mask_parts = [], [], []
        for _, batch in self.iter_decode(
            embedding, point_coords, point_labels, boxes, mask_inputs, multimask_output, batch_size
        ):
            low_res, iou = batch.low_res_logits, batch.iou_predictions
            with torch.inference_mode():
                masks = interpolate_masks(
                    low_res, embedding.input_size, embedding.original_size, self.model.image_size
                )
            mask_parts.append(masks if return_logits else masks > 0.0)
            low_res_parts.append(low_res)
            iou_parts.append(iou)
        return Prediction(torch.cat(mask_parts), torch.cat(iou_parts), torch.cat(low_res_parts))

    def _check_prompts(self, coords, labels, boxes, masks) -> int:
        counts = []
        if (coords is None) != (labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if coords is not None:
            if coords.ndim != 3 or coords.shape[-1] != 2:
                raise ValueError(f"point_coords must be (B, N, 2), got {tuple(coords.shape)}")
            if labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"point_labels must be (B, N) = {tuple(coords.shape[:2])}, "
                    f"got {tuple(labels.shape)}"
                )
            if not bool(((labels >= -1) & (labels <= 1)).all()):
                raise ValueError("point_labels must be 1 (foreground), 0 (background) or -1")
            counts.append(coords.shape[0])
        if boxes is not None:
            if boxes.ndim != 2 or boxes.shape[-1] != 4:
                raise ValueError(f"boxes must be (B, 4) XYXY, got {tuple(boxes.shape)}")
            counts.append(boxes.shape[0])
        if masks is not None:
            s = self.model.config.low_res_mask_size
            if masks.ndim != 4 or tuple(masks.shape[1:]) != (1, s, s):
                raise ValueError(f"mask_inputs must be (B, 1, {s}, {s}), got {tuple(masks.shape)}")
            counts.append(masks.shape[0])
        if not counts:
            raise ValueError("give at least one prompt: points, boxes or mask_inputs")
        if len(set(counts)) > 1:
            raise ValueError(f"prompt batch sizes differ: {counts}")
        return counts[0]
