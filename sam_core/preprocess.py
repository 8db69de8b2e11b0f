"""Image and coordinate transforms into and out of the encoder's input frame.

The encoder sees the image resized so its longest side is `image_size` (PIL
bilinear), normalised with the SAM pixel statistics and zero-padded bottom/right
to a square. Prompts are given in original pixels and mapped by the same scale.
"""

from __future__ import annotations

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


def upscale_masks(
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    image_size: int,
) -> torch.Tensor:
    """(B, M, s, s) low-res logits -> (B, M, H, W) logits at the original size.

    Bilinear to the padded input square, crop away the padding, bilinear to the
    original image size (align_corners=False both times).
    """
    masks = F.interpolate(low_res, (image_size, image_size), mode="bilinear", align_corners=False)
    masks = masks[..., : input_size[0], : input_size[1]]
    return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)
