"""ViT image encoder: patch embedding, windowed/global attention with relative
position bias, and a convolutional neck down to the prompt embedding width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock
from .config import SamConfig


def _relative_index(size: int, device: torch.device) -> torch.Tensor:
    """(size, size) int64 index into a (2*size-1, C) table: q - k + size - 1."""
    coords = torch.arange(size, device=device)
    return coords[:, None] - coords[None, :] + (size - 1)


_BIAS_BLOCK_BYTES = 64 << 20


class Attention(nn.Module):
    """Multi-head self-attention over a (B, H, W, C) token grid with decomposed
    relative position bias (separate tables for the row and column offsets)."""

    def __init__(self, dim: int, num_heads: int, grid_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        # Tables sized for a grid_size x grid_size input (the window, or the whole grid).
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        # Bias[q, k] = <q, R_h[qh - kh]> + <q, R_w[qw - kw]>, computed on the unscaled
        # query as in the original model and passed as an additive attention mask.
        r_h = self.rel_pos_h[_relative_index(h, q.device)].to(q.dtype)  # (H, H, head_dim)
        r_w = self.rel_pos_w[_relative_index(w, q.device)].to(q.dtype)
        q_grid = q.reshape(b, self.num_heads, h, w, -1)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, r_h)  # (B, heads, H, W, H)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, r_w)  # (B, heads, H, W, W)
        if torch.is_grad_enabled() and q.requires_grad:
            out = self._attend_explicit(q, k, v, bias_h, bias_w)
            return self.proj(out.transpose(1, 2).reshape(b, h, w, c))
        # The full bias is (heads, N, N) per item, 805 MB in a vit_b global block.
        # Built a few query rows at a time it stays in cache (0.82 -> 0.53 s per
        # global block here) and never needs the whole at once.
        row_bytes = self.num_heads * w * n * q.element_size()
        rows = max(1, min(h, _BIAS_BLOCK_BYTES // row_bytes))
        items = max(1, _BIAS_BLOCK_BYTES // (row_bytes * h)) if rows == h else 1
        out = torch.empty_like(q)
        for i in range(0, b, items):
            for r in range(0, h, rows):
                j, s = slice(i, i + items), slice(r * w, (r + rows) * w)
                bias = (
                    bias_h[j, :, r : r + rows, :, :, None] + bias_w[j, :, r : r + rows, :, None, :]
                )
                out[j, :, s] = F.scaled_dot_product_attention(
                    q[j, :, s], k[j], v[j], attn_mask=bias.reshape(*bias.shape[:2], -1, n)
                )
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))

    @staticmethod
    def _attend_explicit(
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        bias_h: torch.Tensor,
        bias_w: torch.Tensor,
    ) -> torch.Tensor:
        """Attention with the decomposed bias added to the scores, for training.

        q, k, v: (B, heads, N, head_dim); bias_h (B, heads, H, W, H), bias_w (B, heads,
        H, W, W). Under autograd, SDPA with an attention mask that needs a gradient
        falls back to a slower path on CPU: a 32x32 global block, 8 images, trained
        in bf16, took 0.85 s forward and backward that way against 0.27 s written out.
        """
        b, heads, n, d = q.shape
        h, w = bias_h.shape[2], bias_h.shape[3]
        scores = ((q * d**-0.5) @ k.transpose(-2, -1)).view(b, heads, h, w, h, w)
        # In place: the product's backward needs q and k, not its output.
        scores.add_(bias_h[..., None]).add_(bias_w[..., None, :])
        return scores.view(b, heads, n, n).softmax(dim=-1) @ v


def _window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * num_windows, window, window, C), zero-padding H, W up."""
    b, h, w, c = x.shape
    pad_h, pad_w = (-h) % window, (-w) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def _window_unpartition(
    windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Inverse of `_window_partition`, dropping the padding."""
    hp, wp = padded
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.view(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, : size[0], : size[1], :]


class Block(nn.Module):
    """Pre-norm transformer block; windowed attention when window_size > 0."""

    def __init__(
        self, dim: int, num_heads: int, mlp_ratio: float, window_size: int, grid_size: int
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, window_size if window_size > 0 else grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            size = x.shape[1:3]
            x, padded = _window_partition(x, self.window_size)
            x = _window_unpartition(self.attn(x), self.window_size, padded, size)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p, W/p, C)."""

    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """(B, 3, S, S) normalised image -> (B, prompt_embed_dim, S/p, S/p) embedding."""

    def __init__(self, config: SamConfig) -> None:
        super().__init__()
        grid = config.embedding_size
        dim = config.encoder_embed_dim
        self.patch_embed = PatchEmbed(config.patch_size, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, dim))
        self.blocks = nn.ModuleList(
            Block(
                dim,
                config.encoder_num_heads,
                config.encoder_mlp_ratio,
                0 if i in config.encoder_global_attn_indexes else config.window_size,
                grid,
            )
            for i in range(config.encoder_depth)
        )
        out = config.prompt_embed_dim
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out, kernel_size=1, bias=False),
            LayerNorm2d(out),
            nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
