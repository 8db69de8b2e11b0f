"""Model configurations: the three official SAM sizes and arbitrary smaller ones.

A config holds every dimension needed to build a model whose state dict has the
official key names. `config_from_state_dict` recovers it from tensor shapes alone.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import torch


@dataclasses.dataclass(frozen=True)
class SamConfig:
    """Dimensions of a SAM model.

    image_size: side of the square encoder input in pixels (official 1024).
    patch_size: ViT patch side in pixels; the embedding grid is image_size // patch_size.
    encoder_*: ViT width, depth, heads, MLP ratio; windowed attention of side
        `window_size` tokens except in `global_attn_indexes`.
    prompt_embed_dim: channels of the image embedding, prompt tokens and decoder.
    decoder_*: two-way transformer depth, heads, MLP width and attention downsampling.
    """

    image_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_mlp_ratio: float = 4.0
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    decoder_attention_downsample_rate: int = 2
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError("encoder_embed_dim must be divisible by encoder_num_heads")
        internal = self.prompt_embed_dim // self.decoder_attention_downsample_rate
        if internal % self.decoder_num_heads or self.prompt_embed_dim % self.decoder_num_heads:
            raise ValueError("decoder widths must be divisible by decoder_num_heads")
        if self.prompt_embed_dim % 8:
            raise ValueError("prompt_embed_dim must be a multiple of 8 (output upscaling)")
        bad = [i for i in self.encoder_global_attn_indexes if not 0 <= i < self.encoder_depth]
        if bad:
            raise ValueError(f"global attention indexes {bad} outside depth {self.encoder_depth}")

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (official 64)."""
        return self.image_size // self.patch_size

    @property
    def low_res_mask_size(self) -> int:
        """Side of the decoder's low-resolution mask logits (official 256)."""
        return 4 * self.embedding_size


VIT_B = SamConfig()
VIT_L = SamConfig(
    encoder_embed_dim=1024,
    encoder_depth=24,
    encoder_num_heads=16,
    encoder_global_attn_indexes=(5, 11, 17, 23),
)
VIT_H = SamConfig(
    encoder_embed_dim=1280,
    encoder_depth=32,
    encoder_num_heads=16,
    encoder_global_attn_indexes=(7, 15, 23, 31),
)
CONFIGS: dict[str, SamConfig] = {"vit_b": VIT_B, "vit_l": VIT_L, "vit_h": VIT_H}


def model_type_of(config: SamConfig) -> str:
    """The official name of `config` ("vit_b", ...) or "custom"."""
    for name, official in CONFIGS.items():
        if official == config:
            return name
    return "custom"


def _count(state_dict: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    indexes = {int(m.group(1)) for k in state_dict if (m := regex.match(k))}
    return max(indexes) + 1 if indexes else 0


def config_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], decoder_num_heads: int = 8
) -> SamConfig:
    """Recover a config from the shapes of an official-format state dict.

    Head counts are not visible in decoder shapes: `decoder_num_heads` (official 8)
    is taken as given. Raises KeyError naming the first missing key.
    """

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise KeyError(key)
        return tuple(state_dict[key].shape)

    embed_dim, _, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    grid = shape("image_encoder.pos_embed")[1]
    depth = _count(state_dict, r"image_encoder\.blocks\.(\d+)\.")
    head_dim = shape("image_encoder.blocks.0.attn.rel_pos_h")[1]
    rel_lengths = [shape(f"image_encoder.blocks.{i}.attn.rel_pos_h")[0] for i in range(depth)]
    global_idx = tuple(i for i, n in enumerate(rel_lengths) if n == 2 * grid - 1)
    windowed = [n for n in rel_lengths if n != 2 * grid - 1]
    # With no windowed block the window size is irrelevant; keep the official one.
    window = (windowed[0] + 1) // 2 if windowed else 14
    mlp_hidden = shape("image_encoder.blocks.0.mlp.lin1.weight")[0]
    prompt_dim = shape("image_encoder.neck.0.weight")[0]
    internal = shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    return SamConfig(
        image_size=grid * patch,
        patch_size=patch,
        encoder_embed_dim=embed_dim,
        encoder_depth=depth,
        encoder_num_heads=embed_dim // head_dim,
        encoder_mlp_ratio=mlp_hidden / embed_dim,
        encoder_global_attn_indexes=global_idx,
        window_size=window,
        prompt_embed_dim=prompt_dim,
        mask_in_chans=shape("prompt_encoder.mask_downscaling.3.weight")[0],
        decoder_depth=_count(state_dict, r"mask_decoder\.transformer\.layers\.(\d+)\."),
        decoder_num_heads=decoder_num_heads,
        decoder_mlp_dim=shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        decoder_attention_downsample_rate=prompt_dim // internal,
        num_multimask_outputs=shape("mask_decoder.mask_tokens.weight")[0] - 1,
        iou_head_depth=_count(state_dict, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\."),
        iou_head_hidden_dim=shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
    )
