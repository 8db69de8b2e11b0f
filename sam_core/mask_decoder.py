"""Mask decoder: two-way transformer, upscaling, hypernetwork masks and IoU head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import MLP, LayerNorm2d
from .config import SamConfig
from .transformer import ImageCache, TwoWayTransformer


# The upscaling tensors are large and a fresh allocation costs more than the
# arithmetic on it, so elementwise steps run in place unless autograd needs them.
def _in_place(x: torch.Tensor) -> bool:
    return not (torch.is_grad_enabled() and x.requires_grad)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_(x) if _in_place(x) else F.gelu(x)


# Bytes of the (16 hw, C/8) upscaling intermediate per chunk of prompts. It should stay
# in cache between the GEMM that writes it, the GELU and the GEMM that reads it: for
# the official models one prompt's is 8 MB (hw = 4096, C = 256) and 8 prompts at once
# ran 1.7x slower (fp32, 2 threads), so they go one at a time; smaller models' prompts
# are grouped up to this size, since each chunk costs ~10 kernel launches.
_UPSCALE_CHUNK_BYTES = 8 << 20
# Under autograd each chunk adds its own graph nodes and saved tensors: 16 prompts at
# once made a patch-8 training step 1.63 s, against 1.80-2.08 s one prompt at a time.
_UPSCALE_CHUNK_AUTOGRAD = 16


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

    def upscaled_masks(self, keys: torch.Tensor, hyper_in: torch.Tensor) -> torch.Tensor:
        """Image tokens (B, hw, C) and mask vectors (B, M, C/8) -> logits (B, M, 4h, 4w).

        The two stride-2 transposed convolutions, computed channels-last: each one
        is a GEMM from a token's channels to its 2x2 children's channels. Pixels stay
        in that blocked order until the (B, M, ...) logits, which are reordered once.
        """
        conv1, norm, _, conv2, _ = self.output_upscaling
        b, hw, c = keys.shape
        c4, c8 = conv1.out_channels, conv2.out_channels
        # ConvTranspose2d weight (in, out, kh, kw) -> (in, kh * kw * out).
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c4)
        # addmm adds the bias inside the GEMM instead of in another pass over x.
        x = torch.addmm(conv1.bias.repeat(4), keys.reshape(b * hw, c), w1).view(b, hw, 4, c4)
        x = _gelu(F.layer_norm(x, (c4,), norm.weight, norm.bias, norm.eps))
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c4, 4 * c8)
        x = _gelu(torch.addmm(conv2.bias.repeat(4), x.view(-1, c4), w2).view(b, hw * 16, c8))
        # (B, M, hw*16), pixels in blocked order. M first: the reorder below then copies
        # runs of two pixels rather than single floats M apart.
        masks = hyper_in @ x.transpose(1, 2)
        side = math.isqrt(hw)
        # Blocked (y, x, dy1, dx1, dy2, dx2) -> row 4y + 2dy1 + dy2, column 4x + 2dx1 + dx2.
        masks = masks.view(b, -1, side, side, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
        return masks.reshape(b, -1, 4 * side, 4 * side)

    def image_cache(self, image_embedding: torch.Tensor, image_pe: torch.Tensor) -> ImageCache:
        """Prompt-independent decoder work for one image with no mask prompt.

        image_embedding: (1, C, h, w) image embedding plus the no-mask dense embedding.
        """
        return self.transformer.image_cache(image_embedding, image_pe)

    def decode_tokens(
        self,
        image_embeddings: torch.Tensor | None,
        image_pe: torch.Tensor | None,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor | None,
        cache: ImageCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the two-way transformer; see `forward` for the arguments.

        Returns the output tokens (B, 1 + num_mask_tokens + N, C) and the image
        tokens (B or 1, hw, C).
        """
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1
        )
        if cache is None:
            src = image_embeddings + dense_prompt_embeddings
            return self.transformer(src, image_pe, tokens)
        return self.transformer(None, None, tokens, cache)

    def predict_iou(self, tokens: torch.Tensor, multimask_output: bool) -> torch.Tensor:
        """Predicted IoU (B, M) from the output tokens of `decode_tokens`."""
        iou_pred = self.iou_prediction_head(tokens[:, 0, :])
        return iou_pred[:, 1:] if multimask_output else iou_pred[:, :1]

    def predict_masks(
        self, tokens: torch.Tensor, keys: torch.Tensor, multimask_output: bool
    ) -> torch.Tensor:
        """Low-res mask logits (B, M, 4h, 4w) from `decode_tokens`'s outputs.

        Only the mask tokens whose output is returned go through their hypernetwork.
        """
        selected = range(1, self.num_mask_tokens) if multimask_output else range(0, 1)
        mlps = self.output_hypernetworks_mlps
        # Tokens are float32 in a bf16 predictor too; the image tokens may not be.
        hyper_in = torch.stack([mlps[i](tokens[:, 1 + i, :]) for i in selected], dim=1)
        hyper_in = hyper_in.to(keys.dtype)
        batch = tokens.shape[0]
        if batch == 0:
            side = 4 * math.isqrt(keys.shape[1])
            return hyper_in.new_zeros(0, hyper_in.shape[1], side, side)
        keys = keys.expand(batch, -1, -1)
        if _in_place(keys):
            per_prompt = 16 * keys.shape[1] * self.output_upscaling[3].out_channels
            chunk = max(1, _UPSCALE_CHUNK_BYTES // (per_prompt * keys.element_size()))
        else:
            chunk = _UPSCALE_CHUNK_AUTOGRAD
        return torch.cat(
            [
                self.upscaled_masks(keys[i : i + chunk], hyper_in[i : i + chunk])
                for i in range(0, batch, chunk)
            ]
        )

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
        tokens, keys = self.decode_tokens(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, cache
        )
        masks = self.predict_masks(tokens, keys, multimask_output)
        return masks, self.predict_iou(tokens, multimask_output)
