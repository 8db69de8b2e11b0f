"""Mask decoder: two-way transformer, upscaling, hypernetwork masks and IoU head."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import MLP, LayerNorm2d
from .config import SamConfig
from .transformer import ImageCache, TwoWayTransformer


class MaskDecoder(nn.Module):
    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        dim = config.prompt_embed_dim
        self.transformer = TwoWayTransformer(
            config.decoder_depth,
            dim,
            config.decoder_num_heads,
            config.decoder_mlp_dim,
            config.decoder_attention_downsample_rate,
        )
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            dim, config.iou_head_hidden_dim, self.num_mask_tokens, config.iou_head_depth
        )

    def image_cache(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> ImageCache:
        """Prompt-independent decoder work for one image with no mask prompt.

        image_embedding: (1, C, h, w) image embedding plus the no-mask dense embedding.
        """
        return self.transformer.image_cache(image_embedding, image_pe)

    def forward(
        self,
        image_embeddings: torch.Tensor | None,
        image_pe: torch.Tensor | None,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor | None,
        multimask_output: bool,
        cache: ImageCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for a batch of B prompts on one image.

        image_embeddings: (1, C, h, w); image_pe: (1, C, h, w);
        sparse_prompt_embeddings: (B, N, C); dense_prompt_embeddings: (B or 1, C, h, w).
        Or, instead of the three image arguments, `cache` from `image_cache`.
        Returns low-res mask logits (B, M, 4h, 4w) and predicted IoU (B, M), where M
        is num_multimask_outputs if multimask_output else 1.
        """
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1
        )
        if cache is None:
            src = image_embeddings + dense_prompt_embeddings
            hs, keys = self.transformer(src, image_pe, tokens)
        else:
            hs, keys = self.transformer(None, None, tokens, cache)
        h = w = math.isqrt(keys.shape[1])
        keys = keys.expand(batch, -1, -1)
        upscaled = self.output_upscaling(keys.transpose(1, 2).reshape(batch, -1, h, w))

        # Only the mask tokens whose output is returned go through their hypernetwork.
        selected = range(1, self.num_mask_tokens) if multimask_output else range(0, 1)
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in selected], dim=1
        )
        b, c, uh, uw = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, uh * uw)).reshape(b, -1, uh, uw)
        iou_pred = self.iou_prediction_head(hs[:, 0, :])
        iou_pred = iou_pred[:, 1:] if multimask_output else iou_pred[:, :1]
        return masks, iou_pred
