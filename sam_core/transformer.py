"""Two-way transformer of the mask decoder: prompt tokens and image embedding
attend to each other in turn.

Layer 0 sees the image embedding before any prompt has touched it, so its image
key/value projections (token-to-image) and image query projection
(image-to-token) are the same for every prompt of an image. `ImageCache` holds
them, computed once per image, and the layers broadcast them over the prompts.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose q/k/v projections may downsample the width."""

    def __init__(self, dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        internal = dim // downsample_rate
        self.q_proj = nn.Linear(dim, internal)
        self.k_proj = nn.Linear(dim, internal)
        self.v_proj = nn.Linear(dim, internal)
        self.out_proj = nn.Linear(internal, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, heads, N, D / heads)."""
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention on head-split tensors (batch dims broadcast), then out_proj.

        q: (Bq, heads, Nq, d); k, v: (Bk, heads, Nk, d) with Bq == Bk, or one of
        them 1. Returns (max(Bq, Bk), Nq, C).
        """
        if k.shape[0] == 1 and q.shape[0] > 1:
            # Shared keys: fold the prompts into the query axis -> one large GEMM.
            b, h, nq, d = q.shape
            folded = q.transpose(0, 1).reshape(1, h, b * nq, d)
            out = F.scaled_dot_product_attention(folded, k, v)
            out = out.reshape(h, b, nq, d).transpose(0, 1)
        else:
            if q.shape[0] == 1 and k.shape[0] > 1:
                q = q.expand(k.shape[0], -1, -1, -1)
            out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, Nq, C), (B, Nk, C), (B, Nk, C) -> (B, Nq, C)."""
        return self.attend(
            self.split_heads(self.q_proj(q)),
            self.split_heads(self.k_proj(k)),
            self.split_heads(self.v_proj(v)),
        )


class ImageCache(NamedTuple):
    """Prompt-independent tensors of one image for decoder layer 0.

    keys: (1, HW, C) image embedding plus dense (no-mask) embedding, flattened.
    key_pe: (1, HW, C) positional encoding of the embedding grid.
    t2i_k, t2i_v: (1, heads, HW, d) layer-0 token-to-image keys and values.
    i2t_q: (1, heads, HW, d) layer-0 image-to-token queries.
    """

    keys: torch.Tensor
    key_pe: torch.Tensor
    t2i_k: torch.Tensor
    t2i_v: torch.Tensor
    i2t_q: torch.Tensor


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image, token MLP, image-to-token."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        downsample_rate: int,
        skip_first_layer_pe: bool,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def image_projections(
        self, keys: torch.Tensor, key_pe: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Head-split t2i keys, t2i values and i2t queries of the image tokens."""
        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        keys_pe = keys + key_pe
        return (
            t2i.split_heads(t2i.k_proj(keys_pe)),
            t2i.split_heads(t2i.v_proj(keys)),
            i2t.split_heads(i2t.q_proj(keys_pe)),
        )

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        cache: ImageCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, N, C), keys (B or 1, HW, C) -> updated queries, keys (B, HW, C)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        if cache is not None:
            t2i_k, t2i_v, i2t_q = cache.t2i_k, cache.t2i_v, cache.i2t_q
        else:
            t2i_k, t2i_v, i2t_q = self.image_projections(keys, key_pe)

        t2i = self.cross_attn_token_to_image
        q = t2i.split_heads(t2i.q_proj(queries + query_pe))
        queries = self.norm2(queries + t2i.attend(q, t2i_k, t2i_v))
        queries = self.norm3(queries + self.mlp(queries))

        i2t = self.cross_attn_image_to_token
        q_tokens = queries + query_pe
        k = i2t.split_heads(i2t.k_proj(q_tokens))
        v = i2t.split_heads(i2t.v_proj(queries))
        keys = self.norm4(keys + i2t.attend(i2t_q, k, v))
        return queries, keys


class TwoWayTransformer(nn.Module):
    def __init__(
        self, depth: int, dim: int, num_heads: int, mlp_dim: int, downsample_rate: int
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(dim, num_heads, mlp_dim, downsample_rate, i == 0)
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)

    def image_cache(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> ImageCache:
        """(1, C, h, w) image embedding (+ dense prompt) and its (1, C, h, w) encoding."""
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        return ImageCache(keys, key_pe, *self.layers[0].image_projections(keys, key_pe))

    def forward(
        self,
        image_embedding: torch.Tensor | None,
        image_pe: torch.Tensor | None,
        point_embedding: torch.Tensor,
        cache: ImageCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, C) against an image embedding (B or 1, C, h, w) or a cache.

        Returns the updated tokens (B, N, C) and image tokens (B, hw, C).
        """
        if cache is not None:
            keys, key_pe = cache.keys, cache.key_pe
        else:
            keys = image_embedding.flatten(2).transpose(1, 2)
            key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for i, layer in enumerate(self.layers):
            queries, keys = layer(queries, keys, point_embedding, key_pe, cache if i == 0 else None)
        q = queries + point_embedding
        k = keys + key_pe
        queries = queries + self.final_attn_token_to_image(q, k, keys)
        return self.norm_final_attn(queries), keys
