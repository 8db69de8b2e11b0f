"""Prompt encoder: points and box corners to sparse tokens, masks to a dense map."""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import LayerNorm2d
from .config import SamConfig

# Point labels: 1 foreground, 0 background, -1 padding (not a point). Box corners
# use the learned embeddings 2 (top-left) and 3 (bottom-right).
LABEL_PAD = -1


class PositionEmbeddingRandom(nn.Module):
    """Positional encoding with random spatial frequencies (Fourier features)."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_pos_feats))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 2) xy in [0, 1] -> (..., 2 * num_pos_feats)."""
        coords = (2 * coords - 1) @ self.positional_encoding_gaussian_matrix.to(coords.dtype)
        coords = 2 * math.pi * coords
        return torch.cat([torch.sin(coords), torch.cos(coords)], dim=-1)

    def grid(self, size: int) -> torch.Tensor:
        """Encoding of every cell centre of a size x size grid: (C, size, size)."""
        device = self.positional_encoding_gaussian_matrix.device
        centres = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
        xy = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), dim=-1)
        return self.encode(xy).permute(2, 0, 1)

    def encode_pixels(self, coords: torch.Tensor, image_size: int) -> torch.Tensor:
        """(..., 2) xy in input pixels (0..image_size) -> (..., C)."""
        return self.encode(coords / image_size)


class PromptEncoder(nn.Module):
    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        dim = config.prompt_embed_dim
        self.embed_dim = dim
        self.image_size = config.image_size
        self.embedding_size = config.embedding_size
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        # 0: background point, 1: foreground point, 2: box top-left, 3: box bottom-right.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        chans = config.mask_in_chans
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(chans // 4),
            nn.GELU(),
            nn.Conv2d(chans // 4, chans, kernel_size=2, stride=2),
            LayerNorm2d(chans),
            nn.GELU(),
            nn.Conv2d(chans, dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image embedding grid: (1, C, h, w)."""
        return self.pe_layer.grid(self.embedding_size).unsqueeze(0)

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor, pad: bool) -> torch.Tensor:
        """(B, N, 2) xy in input-frame pixels, (B, N) labels -> (B, N[+1], C).

        `pad` appends one not-a-point token, as the original model does when a
        prompt has points but no box.
        """
        coords = coords + 0.5  # to the pixel centre
        if pad:
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), LABEL_PAD)], dim=1)
        pe = self.pe_layer.encode_pixels(coords, self.image_size)
        labels = labels[..., None]
        pe = torch.where(labels == LABEL_PAD, self.not_a_point_embed.weight.to(pe.dtype), pe)
        pe = pe + (labels == 0) * self.point_embeddings[0].weight.to(pe.dtype)
        return pe + (labels == 1) * self.point_embeddings[1].weight.to(pe.dtype)

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(B, 4) XYXY in input-frame pixels -> (B, 2, C) corner tokens."""
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        pe = self.pe_layer.encode_pixels(corners, self.image_size)
        corner_types = torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight])
        return pe + corner_types.to(pe.dtype)

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, 4h, 4w) low-resolution mask logits -> (B, C, h, w)."""
        return self.mask_downscaling(masks)

    def no_mask_dense(self) -> torch.Tensor:
        """Dense embedding used when there is no mask prompt: (1, C, h, w)."""
        s = self.embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, s, s)

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        masks: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse (B, N, C) and dense (B, C, h, w) embeddings of a batch of prompts."""
        if points is not None:
            batch = points[0].shape[0]
        elif boxes is not None:
            batch = boxes.shape[0]
        elif masks is not None:
            batch = masks.shape[0]
        else:
            batch = 1
        device = self.no_mask_embed.weight.device
        tokens = [torch.empty(batch, 0, self.embed_dim, device=device)]
        if points is not None:
            tokens.append(self.embed_points(points[0], points[1], pad=boxes is None))
        if boxes is not None:
            tokens.append(self.embed_boxes(boxes))
        sparse = torch.cat(tokens, dim=1)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = self.no_mask_dense().expand(batch, -1, -1, -1)
        return sparse, dense
