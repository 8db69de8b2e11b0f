"""Seeded random SAM weights and test images, shared by tests, benchmarks and scripts.

Needs only torch, numpy and sam_core: no reference package.
"""

from __future__ import annotations

import numpy as np
import torch

from sam_core import Sam, SamConfig

# The tiny config of the committed fixtures: windowed blocks whose window (6) does
# not divide the grid (16), so the padding path runs; a narrow decoder.
TINY = SamConfig(
    image_size=256,
    encoder_embed_dim=64,
    encoder_depth=3,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1,),
    window_size=6,
    prompt_embed_dim=64,
    mask_in_chans=8,
    decoder_num_heads=8,
    decoder_mlp_dim=128,
    iou_head_hidden_dim=64,
)


def seeded_state_dict(config: SamConfig, seed: int) -> dict[str, torch.Tensor]:
    """A reproducible random state dict in the official format (our module init,
    so it needs no reference package; both implementations load it)."""
    torch.manual_seed(seed)
    state = Sam(config).state_dict()
    gen = torch.Generator().manual_seed(seed + 1)
    for name, tensor in state.items():
        if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.2)
        # Default init gives mask logits of ~0.03 and near-constant IoU, against
        # which an absolute tolerance of 1e-4 would prove little: scale the last
        # layers so logits and IoU spread over several units.
        elif "output_hypernetworks_mlps" in name and name.endswith("layers.2.weight"):
            tensor.mul_(50.0)
        elif name == "mask_decoder.iou_prediction_head.layers.2.weight":
            tensor.mul_(20.0)
    return state


def test_images(sizes: list[tuple[int, int]], seed: int) -> list[np.ndarray]:
    """Smooth gradients with a few discs: structure that survives resizing."""
    rng = np.random.default_rng(seed)
    images = []
    for h, w in sizes:
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], -1)
        for _ in range(4):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.4) * min(h, w)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 8, img.shape)
        images.append(np.clip(img, 0, 255).astype(np.uint8))
    return images
