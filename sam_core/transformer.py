"""Two-way transformer of the mask decoder: prompt tokens and image embedding
attend to each other in turn.

Most of the decoder's work is on the image tokens (hw = 4096 per prompt for the
official models), and two rewrites of the same arithmetic keep that work small:

- Layer 0 sees the image embedding before any prompt has touched it, so its image
  key/value projections (token-to-image) and image query projection
  (image-to-token) are the same for every prompt. `ImageCache` holds them,
  computed once per image, and every prompt batch reuses them.
- Elsewhere the image tokens differ per prompt. Attention between a few tokens
  and many image tokens is linear in the image tokens on both sides of the
  softmax, so the projections are applied to the few tokens instead: e.g. the
  scores q . (W_k x + b_k) become (W_k^T q) . x (+ a per-query constant that the
  softmax ignores), and the output W_o (sum_i p_i v_i) becomes sum_i p_i (W_o v_i).
  The image tokens are then touched by GEMMs whose inner size is
  heads x tokens (~56) instead of by full-width projections (128) and
  their (B, hw, 128) intermediates. The result is the same up to float rounding.

Image tokens may be held in a lower precision than the prompt tokens (the bf16
predictor keeps tokens in float32): each function casts where the two meet, and
its small token-side products (folded weights, the softmax scale) are computed in
the tokens' precision before the large GEMMs. In float32 the casts are no-ops.
"""

from __future__ import annotations

import math
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
        self.head_dim = internal // num_heads
        self.q_proj = nn.Linear(dim, internal)
        self.k_proj = nn.Linear(dim, internal)
        self.v_proj = nn.Linear(dim, internal)
        self.out_proj = nn.Linear(internal, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, heads, N, D / heads)."""
        b, n, d = x.shape
        return x.reshape(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def head_weights(self, linear: nn.Linear) -> torch.Tensor:
        """(heads, head_dim, C) view of a C -> internal projection's weight."""
        return linear.weight.view(self.num_heads, self.head_dim, -1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Plain attention: (B, Nq, C), (B, Nk, C), (B, Nk, C) -> (B, Nq, C)."""
        out = F.scaled_dot_product_attention(
            self.split_heads(self.q_proj(q)),
            self.split_heads(self.k_proj(k)),
            self.split_heads(self.v_proj(v)),
        )
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))

    def tokens_to_image(
        self,
        tokens: torch.Tensor,
        image_keys: torch.Tensor,
        image_values: torch.Tensor,
        image_pe: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Few token queries (B, N, C) over image tokens (B or 1, hw, C) -> (B, N, C).

        The keys are image_keys + image_pe ((1, hw, C), optional), never summed
        into a (B, hw, C) tensor: the positional part of the scores is one GEMM
        shared by the batch. k_proj is folded into the queries and v_proj applied
        after the weighted sum, so the image tokens are never projected.
        """
        b, n, _ = tokens.shape
        q = self.split_heads(self.q_proj(tokens))  # (B, h, N, d)
        # q . (W_k x + b_k) = (W_k^T q) . x + q . b_k; the last term is constant over
        # the keys of a query, so the softmax drops it.
        # The softmax scale rides on the few queries, not on the (B, h*N, hw) scores.
        scale = 1.0 / math.sqrt(self.head_dim)
        q_folded = (q @ (self.head_weights(self.k_proj) * scale)).reshape(b, -1, tokens.shape[-1])
        q_folded = q_folded.to(image_keys.dtype)  # see the module docstring on precision
        if image_keys.shape[0] == 1 and b > 1:
            # Shared image tokens: one GEMM for all prompts of the batch.
            if image_pe is not None:
                image_keys = image_keys + image_pe
            scores = _shared_scores(q_folded, image_keys)
            probs = torch.softmax(scores, dim=-1)
            mixed = (probs.reshape(-1, probs.shape[-1]) @ image_values[0]).view(
                b, -1, tokens.shape[-1]
            )
        else:
            keys_t = image_keys.transpose(1, 2)
            if image_pe is None:
                scores = q_folded @ keys_t  # (B, h*N, hw)
            else:
                scores = torch.baddbmm(_shared_scores(q_folded, image_pe), q_folded, keys_t)
            probs = torch.softmax(scores, dim=-1)
            mixed = probs @ image_values  # (B, h*N, C)
        # sum_j p_j (W_v x_j + b_v) = W_v (sum_j p_j x_j) + b_v, since sum_j p_j = 1.
        mixed = mixed.view(b, self.num_heads, n, -1).to(tokens.dtype)
        out = mixed @ self.head_weights(self.v_proj).transpose(1, 2)  # (B, h, N, d)
        out = out + self.v_proj.bias.view(self.num_heads, 1, self.head_dim)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))

    def tokens_to_image_cached(
        self, tokens: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """Token queries (B, N, C) over projected image keys/values (1, h, hw, d)."""
        b, n, _ = tokens.shape
        q = self.split_heads(self.q_proj(tokens))  # (B, h, N, d)
        # Fold the prompts into the query axis: one GEMM per head for the batch.
        q = q.transpose(0, 1).reshape(1, self.num_heads, b * n, self.head_dim)
        out = F.scaled_dot_product_attention(q.to(keys.dtype), keys, values)
        out = out.view(self.num_heads, b, n, self.head_dim).permute(1, 2, 0, 3).to(tokens.dtype)
        return self.out_proj(out.reshape(b, n, -1))

    def image_to_tokens(
        self,
        image_queries: torch.Tensor,
        token_keys: torch.Tensor,
        token_values: torch.Tensor,
        image_pe: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
        residual_is_scratch: bool = False,
    ) -> torch.Tensor:
        """Image token queries (B or 1, hw, C) over few token keys/values (B, N, C).

        The queries are image_queries + image_pe ((1, hw, C), optional), summed
        only through the scores as in `tokens_to_image`. Returns (B, hw, C), plus
        `residual` ((B or 1, hw, C)) if given, added by the output GEMM instead of
        another pass. q_proj is folded into the token keys and out_proj into the
        token values, so the image tokens are never projected. With
        `residual_is_scratch` (the caller needs `residual` no more, and it may be
        `image_queries`: those are read before), the sum is written into `residual`.
        """
        b, n, c = token_keys.shape
        h, d = self.num_heads, self.head_dim
        k = self.split_heads(self.k_proj(token_keys))  # (B, h, N, d)
        v = self.split_heads(self.v_proj(token_values))
        # (W_q x + b_q) . k = x . (W_q^T k) + b_q . k
        image_dtype = image_queries.dtype
        k = k * (1.0 / math.sqrt(d))  # the softmax scale, on the few keys
        k_folded = (k @ self.head_weights(self.q_proj)).reshape(b, h * n, c).to(image_dtype)
        bias = (k @ self.q_proj.bias.view(h, d, 1)).reshape(b, h * n, 1).to(image_dtype)
        # Scores as (B, h*N, hw): the softmax runs over the N tokens of each head with
        # hw contiguous, which vectorises; a softmax over a last axis of ~7 does not.
        if image_queries.shape[0] == 1 and b > 1:
            if image_pe is not None:
                image_queries = image_queries + image_pe
            scores = _shared_scores(k_folded, image_queries).add_(bias)
        else:
            if image_pe is not None:
                bias = _shared_scores(k_folded, image_pe).add_(bias)
            scores = torch.baddbmm(bias, k_folded, image_queries.transpose(1, 2))
        scores = scores.view(b, h, n, -1)
        probs = torch.softmax(scores, dim=2).view(b, h * n, -1)
        # W_o concat_h(sum_i p_hi v_hi) = sum_{h,i} p_hi (W_o,h v_hi). The bias rides
        # along as b_o / h on every row: each head's probabilities sum to 1.
        w_out = self.out_proj.weight.view(c, h, d).permute(1, 2, 0)  # (h, d, C)
        v_out = ((v @ w_out).reshape(b, h * n, c) + self.out_proj.bias / h).to(image_dtype)
        if residual is None:
            return probs.transpose(1, 2) @ v_out
        in_place = (
            residual_is_scratch
            and residual.shape[0] == b
            and not (torch.is_grad_enabled() and residual.requires_grad)
        )
        if in_place:
            # Out of place, baddbmm first copies the (B, hw, C) residual into its output:
            # a pass over tens of MB that costs about as much as the GEMM.
            return residual.baddbmm_(probs.transpose(1, 2), v_out)
        return torch.baddbmm(residual, probs.transpose(1, 2), v_out)


def _shared_scores(queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    """(B, Q, C) queries against image tokens shared by the batch (1, hw, C) -> (B, Q, hw).

    One GEMM with B * Q rows instead of B small ones.
    """
    b, q, c = queries.shape
    return (queries.reshape(b * q, c) @ image_tokens[0].T).view(b, q, -1)


def _with_pe(keys: torch.Tensor, key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Image tokens (B or 1, hw, C) and their encoding (1, hw, C) -> (keys, pe) to attend with.

    Per-prompt tokens (B > 1) are summed with the encoding once, (B, hw, C): one pass
    over them, where leaving the encoding to the scores costs a GEMM as large as the
    scores' own in each attention that reads them. Shared tokens are left unsummed,
    since the attention sums them once for the whole batch.
    """
    if keys.shape[0] > 1:
        return keys + key_pe, None
    return keys, key_pe


class ImageCache(NamedTuple):
    """Prompt-independent tensors of one image for decoder layer 0.

    keys: (1, hw, C) image embedding plus dense (no-mask) embedding, flattened.
    key_pe: (1, hw, C) positional encoding of the embedding grid.
    keys_pe: (1, hw, C) their sum, the image-to-token queries before projection.
    t2i_k, t2i_v: (1, heads, hw, d) layer-0 token-to-image keys and values.
    """

    keys: torch.Tensor
    key_pe: torch.Tensor
    keys_pe: torch.Tensor
    t2i_k: torch.Tensor
    t2i_v: torch.Tensor


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
        self, keys_pe: torch.Tensor, keys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Head-split token-to-image keys and values of (1, hw, C) image tokens."""
        t2i = self.cross_attn_token_to_image
        dtype = t2i.k_proj.weight.dtype  # once per image: in the weights' precision
        k, v = t2i.k_proj(keys_pe.to(dtype)), t2i.v_proj(keys.to(dtype))
        return t2i.split_heads(k.to(keys.dtype)), t2i.split_heads(v.to(keys.dtype))

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        cache: ImageCache | None = None,
        keys_are_scratch: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, N, C), keys (B or 1, hw, C) -> updated queries, keys (B, hw, C).

        keys_are_scratch: `keys` is this transformer's own intermediate, which may be
        overwritten (not the caller's image embedding).
        """
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        t2i, i2t = self.cross_attn_token_to_image, self.cross_attn_image_to_token
        if cache is not None:
            attn = t2i.tokens_to_image_cached(queries + query_pe, cache.t2i_k, cache.t2i_v)
            image_queries, image_pe = cache.keys_pe, None
        else:
            image_queries, image_pe = _with_pe(keys, key_pe)
            attn = t2i.tokens_to_image(queries + query_pe, image_queries, keys, image_pe)
        queries = self.norm2(queries + attn)
        queries = self.norm3(queries + self.mlp(queries))

        keys = i2t.image_to_tokens(
            image_queries,
            queries + query_pe,
            queries,
            image_pe,
            residual=keys,
            residual_is_scratch=keys_are_scratch,
        )
        return queries, self.norm4(keys)


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
        keys_pe = keys + key_pe
        return ImageCache(keys, key_pe, keys_pe, *self.layers[0].image_projections(keys_pe, keys))

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
            # From layer 1 on, keys are the previous layer's output: no one else holds them.
            queries, keys = layer(
                queries, keys, point_embedding, key_pe, cache if i == 0 else None, i > 0
            )
        final = self.final_attn_token_to_image
        keys_pe, pe = _with_pe(keys, key_pe)
        attn = final.tokens_to_image(queries + point_embedding, keys_pe, keys, pe)
        return self.norm_final_attn(queries + attn), keys
