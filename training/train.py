"""Train a small SAM on synthetic scenes (training.scenes) on the CPU.

The SAM recipe, scaled down: prompts are single foreground points (ambiguous:
three masks, the loss flows through the best one), a few points, or noisy boxes
(one mask); then corrective points sampled from the error region of the previous
prediction, with the previous low-res logits fed back as the mask prompt. Mask
loss 20 x focal + 1 x dice, computed on logits upsampled to the image size the
same way inference does; IoU head trained with MSE to the actual IoU of the
thresholded mask. AdamW, linear warm-up then cosine decay over the budget (wall-clock
minutes, or --total-steps), gradient clipping; bf16 autocast with float32 master
weights where bf16 is fast (sam_core.precision), fp32 elsewhere.

Usage:
    python -m training.train --out sam_core/weights/sam_synthetic.pth --minutes 25 --seed 0
    python -m training.train --out run.pth --minutes 240 --session-minutes 30   # part 1
    python -m training.train --resume run.pth --session-minutes 30              # part 2, ...
    python -m training.train --out ft.pth --init sam_core/weights/sam_synthetic.pth ...

The model file stays a plain official-key state dict; everything needed to continue
(optimiser, schedule position, RNG state, budget spent) goes beside it into
`<out>.state.pt`, rewritten at the end of each run and on SIGTERM / Ctrl-C.

Scenes are drawn with seeds in [0, scenes.EVAL_SEED_START); evaluation uses seeds
from EVAL_SEED_START on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import itertools
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sam_core.allocator import keep_freed_memory
from sam_core.build import save_state_dict
from sam_core.config import SamConfig
from sam_core.denormals import flush_denormals
from sam_core.precision import PRECISIONS, fast_bf16, resolve_precision
from sam_core.preprocess import normalize_and_pad
from sam_core.sam import Sam
from sam_core.transformer import Attention as TwoWayAttention

from .scenes import EVAL_SEED_START, generate_scene

# The trained checkpoint's config. decoder_num_heads stays 8: build_sam infers the
# config from tensor shapes and cannot see head counts.
SYNTHETIC_CONFIG = SamConfig(
    image_size=256,
    # 8, not 16: low-res masks are 4x the embedding grid, and at 64 px (patch 16) no
    # model can reach recall@0.75 0.9 on the held-out scenes
    # (benchmarks/mask_resolution_bound.py: 0.893 at best; 1.000 at 128 px).
    patch_size=8,
    encoder_embed_dim=128,
    encoder_depth=6,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(2, 5),
    window_size=8,
    prompt_embed_dim=128,
    mask_in_chans=16,
    decoder_num_heads=8,
    decoder_mlp_dim=512,
    iou_head_hidden_dim=128,
)

DECODER_QK_GAIN = 3.0
FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0
LABEL_FG, LABEL_BG, LABEL_PAD = 1, 0, -1
# Parameters that are tables or tokens rather than weights: no weight decay.
_NO_DECAY = (
    "pos_embed",
    "rel_pos",
    "point_embeddings",
    "not_a_point_embed",
    "no_mask_embed",
    "iou_token",
    "mask_tokens",
)


@dataclasses.dataclass
class TrainConfig:
    """Training hyper-parameters (see the module docstring for the recipe)."""

    # The schedule's budget: the cosine decays over this many wall-clock minutes of
    # training, summed over resumed runs, unless total_steps is set (then over steps,
    # which makes the schedule reproducible).
    minutes: float = 25.0
    total_steps: int = 0
    seed: int = 0
    # 4, not 8: in 10-minute probes (seed 0, 10 held-out scenes) 4 images per step
    # (450 steps) gave mean best IoU 0.423 and point mIoU 0.347, against 0.367 / 0.312
    # with 8 (250 steps) and 0.408 / 0.324 with 2 (900 steps).
    batch_images: int = 4
    prompts_per_image: int = 4
    rounds: int = 2  # 1 initial prompt + (rounds - 1) corrective points
    # Side of the square on which mask losses are computed: low-res logits are
    # upsampled to it (bilinear, as inference does), targets area-downsampled and
    # thresholded at half coverage, so they stay hard.
    loss_size: int = 128
    # Fractions of the initial prompt kinds: one fg point (multimask), 2-3 points, noisy box.
    kind_probs: tuple[float, float, float] = (0.5, 0.15, 0.35)
    # 2e-3 let the image encoder collapse to an image-independent output (a large
    # constant offset that its final LayerNorm turns into near-identical features
    # for every image): the decoder then only learned a prompt-centred blob prior.
    lr: float = 7e-4
    weight_decay: float = 0.05
    # 25, not 100: over 150 steps (seed 0) mIoU rose to 0.10 / 0.18 (round 0 / 1)
    # against 0.04 / 0.05, the decoder leaving its empty-mask phase sooner.
    warmup_steps: int = 25
    min_lr_ratio: float = 0.05
    clip_norm: float = 1.0
    # auto: bf16 autocast only where it is fast (AMX / AVX512-BF16 CPUs, CUDA sm80+); on
    # an AVX2 CPU bf16 is emulated and many times slower than fp32.
    precision: str = "auto"
    log_every: int = 50
    threads: int = 2  # at most; see ThreadTuner


# ---------------------------------------------------------------- losses


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss averaged over pixels: (..., H, W) logits, 0/1 targets -> (...)."""
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * ce).mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft dice of sigmoid(logits) with targets: (..., H, W) -> (...)."""
    p = torch.sigmoid(logits)
    inter = (p * targets).sum(dim=(-2, -1))
    total = p.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1))
    return 1 - (2 * inter + smooth) / (total + smooth)


def mask_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """20 x focal + 1 x dice: (..., H, W) -> (...)."""
    return FOCAL_WEIGHT * focal_loss(logits, targets) + DICE_WEIGHT * dice_loss(logits, targets)


def mask_iou(masks: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks with 0/1 targets: (..., H, W) -> (...); 0 when both are empty."""
    masks = masks.float()
    inter = (masks * targets).sum(dim=(-2, -1))
    union = masks.sum(dim=(-2, -1)) + targets.sum(dim=(-2, -1)) - inter
    return inter / union.clamp(min=1.0)


def select_best(losses: torch.Tensor) -> torch.Tensor:
    """(P, M) per-output mask losses -> (P,) index of the lowest-loss output."""
    return losses.argmin(dim=1)


# ---------------------------------------------------------------- prompts


@dataclasses.dataclass
class PromptGroup:
    """P prompts of one kind (same token count), against masks of the batch's images.

    image_index: (P,) int64 image of each prompt; targets: (P, L, L) float32 0/1 at
    the loss resolution L.
    coords: (P, N, 2) xy pixels; labels: (P, N) int64 (1 fg, 0 bg, -1 pad).
    boxes: (P, 4) XYXY pixels or None; mask_input: (P, 1, s, s) logits or None.
    multimask: three outputs on the first round (single-point prompts).
    """

    image_index: torch.Tensor
    targets: torch.Tensor
    coords: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor | None
    multimask: bool
    mask_input: torch.Tensor | None = None


@dataclasses.dataclass
class Batch:
    """images: (B, 3, S, S) normalised encoder input; groups: prompts on them."""

    images: torch.Tensor
    groups: list[PromptGroup]

    def to(self, device: torch.device) -> Batch:
        """The batch with every tensor on `device` (a no-op on the CPU)."""
        if device.type == "cpu":
            return self

        def move(group: PromptGroup) -> PromptGroup:
            return dataclasses.replace(
                group,
                **{
                    f.name: getattr(group, f.name).to(device)
                    for f in dataclasses.fields(group)
                    if isinstance(getattr(group, f.name), torch.Tensor)
                },
            )

        return Batch(self.images.to(device), [move(g) for g in self.groups])


def _random_pixel(rng: np.random.Generator, region: np.ndarray) -> tuple[int, int] | None:
    """(x, y) of a uniformly random True pixel of an (H, W) bool region, or None."""
    ys, xs = np.nonzero(region)
    if len(ys) == 0:
        return None
    i = int(rng.integers(len(ys)))
    return int(xs[i]), int(ys[i])


def _box_of(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 XYXY box of an (H, W) bool mask (max inclusive)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float32)


def noisy_box(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """The mask's box with each side moved by N(0, 10% of the side), at most 20 px."""
    box = _box_of(mask)
    w, h = box[2] - box[0] + 1, box[3] - box[1] + 1
    std = 0.1 * np.array([w, h, w, h], dtype=np.float32)
    box = box + np.clip(rng.normal(0.0, 1.0, 4) * std, -20, 20).astype(np.float32)
    size = np.array(mask.shape[::-1] * 2, dtype=np.float32) - 1
    return np.clip(box, 0, size)


def _extra_points(
    rng: np.random.Generator, mask: np.ndarray, count: int
) -> list[tuple[int, int, int]]:
    """`count` extra (x, y, label) points: fg inside the mask or bg just around it."""
    x0, y0, x1, y1 = _box_of(mask).astype(int)
    pad = max(4, (x1 - x0 + y1 - y0) // 4)
    near = np.zeros_like(mask)
    near[max(0, y0 - pad) : y1 + pad + 1, max(0, x0 - pad) : x1 + pad + 1] = True
    points = []
    for _ in range(count):
        label = LABEL_FG if rng.random() < 0.5 else LABEL_BG
        xy = _random_pixel(rng, mask if label == LABEL_FG else near & ~mask)
        if xy is not None:
            points.append((*xy, label))
    return points


def downsample_targets(masks: np.ndarray, size: int) -> torch.Tensor:
    """(P, S, S) bool -> (P, size, size) float32 0/1: cells at least half covered."""
    p, s = masks.shape[0], masks.shape[-1]
    f = s // size
    cover = masks.reshape(p, size, f, size, f).mean(axis=(2, 4))
    return torch.from_numpy(cover >= 0.5).float()


def _group(
    rng: np.random.Generator, kind: int, items: list[tuple[int, np.ndarray]], loss_size: int
) -> PromptGroup:
    """Prompts of one kind (0 point, 1 points, 2 box) for (image index, mask) items."""
    coords, labels, boxes = [], [], []
    for _, mask in items:
        points = [(*_random_pixel(rng, mask), LABEL_FG)]
        if kind == 1:
            points += _extra_points(rng, mask, int(rng.integers(1, 3)))
            points += [(0, 0, LABEL_PAD)] * (3 - len(points))
        if kind == 2:
            points = []
            boxes.append(noisy_box(rng, mask))
        coords.append([p[:2] for p in points])
        labels.append([p[2] for p in points])
    n = len(items)
    return PromptGroup(
        image_index=torch.tensor([i for i, _ in items], dtype=torch.int64),
        targets=downsample_targets(np.stack([m for _, m in items]), loss_size),
        coords=torch.tensor(coords, dtype=torch.float32).reshape(n, -1, 2),
        labels=torch.tensor(labels, dtype=torch.int64).reshape(n, -1),
        boxes=torch.from_numpy(np.stack(boxes)) if boxes else None,
        multimask=kind == 0,
    )


def sample_batch(rng: np.random.Generator, cfg: TrainConfig, image_size: int) -> Batch:
    """Fresh scenes (seeds in [0, EVAL_SEED_START)) and prompts on their masks."""
    images, items = [], []
    for b in range(cfg.batch_images):
        scene = generate_scene(int(rng.integers(EVAL_SEED_START)), (image_size, image_size))
        images.append(torch.from_numpy(scene.image).permute(2, 0, 1))
        order = rng.permutation(len(scene.masks))
        reps = math.ceil(cfg.prompts_per_image / max(1, len(order)))
        items += [(b, scene.masks[k]) for k in np.tile(order, reps)[: cfg.prompts_per_image]]
    # Fixed counts per kind keep tensor shapes the same every step: oneDNN then
    # reuses its compiled kernels instead of compiling new ones (seconds per step).
    counts = np.floor(np.array(cfg.kind_probs) * len(items)).astype(int)
    counts[0] += len(items) - counts.sum()
    kinds = rng.permutation(np.repeat(np.arange(3), counts))
    groups = [
        _group(rng, kind, [it for it, k in zip(items, kinds) if k == kind], cfg.loss_size)
        for kind in range(3)
        if (kinds == kind).any()
    ]
    return Batch(normalize_and_pad(images, image_size), groups)


def corrective_points(
    predictions: torch.Tensor, targets: torch.Tensor, generator: torch.Generator, scale: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """One point per prompt sampled uniformly from the error region.

    predictions: (P, L, L) bool; targets: (P, L, L) 0/1; one cell is scale x scale
    image pixels. Returns (P, 1, 2) xy image pixels (a random pixel of the chosen
    cell) and (P, 1) labels: 1 on a missed cell, 0 on a false positive, -1 if no error.
    """
    p, h, w = targets.shape
    error = (predictions != (targets > 0.5)).reshape(p, -1)
    # argmax of uniform scores restricted to the error region = a uniform error cell.
    # Drawn from the CPU generator and then moved: the same stream on every device.
    device = targets.device
    scores = torch.rand(p, h * w, generator=generator).to(device) * error
    index = scores.argmax(dim=1)
    cell = torch.stack([index % w, index // w], dim=1)
    offset = torch.randint(scale, (p, 2), generator=generator).to(device)
    xy = (cell * scale + offset).float()
    labels = targets.reshape(p, -1).gather(1, index[:, None]).squeeze(1).long()
    labels = torch.where(error.any(dim=1), labels, torch.full_like(labels, LABEL_PAD))
    return xy[:, None, :], labels[:, None]


# ---------------------------------------------------------------- model steps


def new_model(config: SamConfig, seed: int) -> Sam:
    """A trainable Sam: ViT-style init in the image encoder (truncated normal 0.02
    linears, zero biases); PyTorch's default init elsewhere, whose larger weights
    let the decoder's attention depend on the prompt position from the start."""
    torch.manual_seed(seed)
    model = Sam(config)
    for module in model.image_encoder.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.trunc_normal_(model.image_encoder.pos_embed, std=0.02)
    for module in model.mask_decoder.modules():
        if isinstance(module, TwoWayAttention):
            _tie_query_key(module)
    model.train()
    model.requires_grad_(True)
    return model


def _tie_query_key(attention: TwoWayAttention, gain: float = DECODER_QK_GAIN) -> None:
    """Start q_proj and k_proj equal and orthogonal (scaled by `gain`).

    Queries and keys carry the same kind of positional encoding (the point's and
    the image grid's), so with q = k projections the attention starts out peaked
    where they match: the decoder can then localise the prompt within ~100 steps,
    where random small projections left it predicting empty masks for hundreds.
    """
    weight = torch.empty_like(attention.q_proj.weight)
    nn.init.orthogonal_(weight, gain)
    with torch.no_grad():
        attention.q_proj.weight.copy_(weight)
        attention.k_proj.weight.copy_(weight)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` for precision "bf16", nothing for "fp32"."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def decode(
    model: Sam, embeddings: torch.Tensor, group: PromptGroup, multimask: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res logits (P, M, s, s) and predicted IoU (P, M) of a prompt group."""
    points = (group.coords, group.labels) if group.coords.shape[1] else None
    sparse, dense = model.prompt_encoder(points, group.boxes, group.mask_input)
    return model.mask_decoder(
        embeddings[group.image_index],
        model.prompt_encoder.dense_pe(),
        sparse,
        dense,
        multimask,
    )


def _group_losses(
    low_res: torch.Tensor, iou_pred: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-prompt mask loss (best output), IoU loss, best index and the best's IoU.

    Logits are upsampled bilinearly to the targets' size, as at inference.
    """
    size = targets.shape[-2:]
    logits = F.interpolate(low_res.float(), size, mode="bilinear", align_corners=False)
    targets = targets[:, None].expand_as(logits)
    per_output = mask_loss(logits, targets)  # (P, M)
    best = select_best(per_output.detach())
    rows = torch.arange(len(best))
    true_iou = mask_iou(logits.detach() > 0, targets)  # (P, M)
    iou_loss = F.mse_loss(iou_pred.float(), true_iou, reduction="none").mean(dim=1)
    return per_output[rows, best], iou_loss, best, true_iou[rows, best]


def image_signal(embeddings: torch.Tensor) -> float:
    """How much the image embeddings (B, C, h, w) differ between the batch's images:
    the std over images at each position and channel, over the overall std. About 0.8
    for a fresh encoder; near 0 when the encoder ignores its input (collapse)."""
    e = embeddings.detach().float()
    return float(e.std(dim=0).mean() / e.std().clamp(min=1e-12))


def train_step(
    model: Sam,
    batch: Batch,
    cfg: TrainConfig,
    generator: torch.Generator,
    precision: str = "fp32",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch over all prompt rounds (not yet backpropagated) and stats.

    precision: "fp32" or "bf16" (autocast on the batch's device); already resolved.
    `generator` is a CPU generator (corrective points), whatever the device.
    """
    device = batch.images.device
    with _autocast(precision, device):
        embeddings = model.image_encoder(batch.images)
    groups = [dataclasses.replace(g) for g in batch.groups]
    total_prompts = sum(len(g.image_index) for g in groups)
    mask_sum = iou_sum = 0.0
    stats: dict[str, float] = {"image_signal": image_signal(embeddings)}
    for r in range(cfg.rounds):
        round_iou = 0.0
        for i, group in enumerate(groups):
            with _autocast(precision, device):
                low_res, iou_pred = decode(model, embeddings, group, group.multimask and r == 0)
            m_loss, i_loss, best, iou = _group_losses(low_res, iou_pred, group.targets)
            mask_sum = mask_sum + m_loss.sum()
            iou_sum = iou_sum + i_loss.sum()
            round_iou += float(iou.sum())
            if r + 1 < cfg.rounds:
                groups[i] = _next_round(group, low_res, best, generator, batch.images.shape[-1])
        stats[f"miou_r{r}"] = round_iou / total_prompts
    scale = 1.0 / (total_prompts * cfg.rounds)
    loss = (mask_sum + iou_sum) * scale
    stats["mask_loss"] = float(mask_sum.detach()) * scale
    stats["iou_loss"] = float(iou_sum.detach()) * scale
    return loss, stats


def _next_round(
    group: PromptGroup,
    low_res: torch.Tensor,
    best: torch.Tensor,
    generator: torch.Generator,
    image_size: int,
) -> PromptGroup:
    """Add a corrective point from the chosen output's errors; feed its logits back."""
    chosen = low_res[torch.arange(len(best)), best].detach().float()[:, None]  # (P, 1, s, s)
    size = group.targets.shape[-2:]
    upsampled = F.interpolate(chosen, size, mode="bilinear", align_corners=False)[:, 0]
    scale = image_size // size[-1]
    xy, labels = corrective_points(upsampled > 0, group.targets, generator, scale)
    return dataclasses.replace(
        group,
        coords=torch.cat([group.coords, xy], dim=1),
        labels=torch.cat([group.labels, labels], dim=1),
        mask_input=chosen,
    )


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over warmup_steps, then cosine decay over `progress` in [0, 1]
    (the fraction of the wall-clock budget used) down to min_lr_ratio x lr."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * warm * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


def make_optimizer(model: Sam, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings and position tables."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        flat = param.ndim < 2 or any(part in name for part in _NO_DECAY)
        (no_decay if flat else decay).append(param)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.999),
    )


def _batches(cfg: TrainConfig, image_size: int, start: int = 0) -> Iterator[Batch]:
    """Batches for steps start, start + 1, ... made when asked for.

    Step k's batch depends only on (seed, k), so a resumed run sees the same data as
    an uninterrupted one. Not prefetched in a helper thread: scene generation is
    Python-heavy, and its 0.17 s per batch, competing for the GIL and a core with the
    step, made a patch-8 step 0.9 s slower (2.9 s against 2.0 s, 2 threads).
    """
    for step in itertools.count(start):
        yield sample_batch(np.random.default_rng([cfg.seed, step]), cfg, image_size)


class ThreadTuner:
    """Chooses between `max_threads` and 1 intra-op threads by measured step time.

    On a shared 2-core machine, two threads stall on each other whenever another
    process holds a core (each parallel region waits for the descheduled thread),
    and one thread is then several times faster. The other count is tried for `probe`
    steps at step `first` of the run, then every `every` steps; the faster recent
    average wins. `first` is early (10, after the first steps' kernel compilation):
    on a contended machine (2026-12-02) 2 threads took 20 s a step and 1 thread 3.5 s,
    and probing only from step 100 on cost a run most of its first 30 minutes.
    """

    def __init__(
        self, max_threads: int = 2, every: int = 100, probe: int = 4, first: int = 10
    ) -> None:
        self.choices = sorted({max_threads, 1}, reverse=True)
        self.every, self.probe, self.first = every, probe, first
        self.mean: dict[int, float] = {}
        self.best = self.choices[0]

    def threads_for(self, step: int) -> int:
        """Threads for step `step` of this run (counted from 0 at the run's start)."""
        early = self.first <= step < self.first + self.probe
        periodic = step >= self.every and step % self.every < self.probe
        if len(self.choices) > 1 and (early or periodic):
            return next(c for c in self.choices if c != self.best)
        return self.best

    def record(self, threads: int, seconds: float) -> None:
        old = self.mean.get(threads)
        self.mean[threads] = seconds if old is None else 0.7 * old + 0.3 * seconds
        if len(self.mean) == len(self.choices):
            self.best = min(self.mean, key=self.mean.get)


STATE_SUFFIX = ".state.pt"
STATE_FORMAT = 1
# Recipe fields a resumed run may change: the budget and how the run is executed.
# Everything else would silently make it a different run than the one it continues.
RESUMABLE_OVERRIDES = frozenset({"minutes", "total_steps", "precision", "threads", "log_every"})


def state_path(model_path: str | Path) -> Path:
    """The training-state file beside a model file: `<model>.state.pt`."""
    return Path(f"{model_path}{STATE_SUFFIX}")


@dataclasses.dataclass
class Trained:
    """What `train` returns: the model (eval mode, on the CPU), the logged stats (one
    dict per log line, all runs), the state to continue from (save_training_state) and
    why it stopped ("budget", "max_steps", "session", "signal")."""

    model: Sam
    history: list[dict[str, float]]
    state: dict[str, Any]
    stopped: str


def save_training_state(state: dict[str, Any], path: str | Path) -> None:
    """Write a training state atomically (a kill while writing leaves the old file)."""
    tmp = Path(f"{path}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """The training state of a model file (or the state file itself), checked.

    Raises ValueError when there is none or it is not one of this trainer's states.
    """
    path = Path(path)
    file = path if path.name.endswith(STATE_SUFFIX) else state_path(path)
    if not file.is_file():
        raise ValueError(
            f"{path} has no training state ({file} is missing): only runs of this trainer "
            f"can be resumed; use --init to start a new run from a model's weights"
        )
    try:
        state = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as e:  # truncated or foreign files
        raise ValueError(f"{file} is not a training state: {e}") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{file} is not a training state of format {STATE_FORMAT}")
    return state


def budget_line(state: dict[str, Any]) -> str:
    """The total budget spent, in words: steps, hours of wall time and runs."""
    seconds = float(state["seconds"])
    return (
        f"budget spent: {state['step']} steps, {seconds:.0f} s ({seconds / 3600:.2f} h) "
        f"of training wall time over {len(state['runs'])} run(s)"
    )


def train(
    config: SamConfig,
    cfg: TrainConfig,
    max_steps: int | None = None,
    log: Callable[[str], None] = print,
    *,
    device: str | torch.device = "cpu",
    resume: dict[str, Any] | None = None,
    init: tuple[dict[str, torch.Tensor], str] | None = None,
    session_minutes: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_minutes: float = 10.0,
) -> Trained:
    """Train until the budget (cfg.minutes of wall time or cfg.total_steps, summed over
    resumed runs), `max_steps` (total, all runs), `session_minutes` of this run or
    `should_stop()` says stop, whichever comes first.

    resume: a state from load_training_state (model, optimiser, schedule position,
    RNG); cfg must then be its recipe. init: (state dict, name) of weights to start
    a new run from. checkpoint(state) is called every `checkpoint_minutes`.
    """
    threads_before = torch.get_num_threads()
    try:
        return _train(
            config,
            cfg,
            max_steps,
            log,
            torch.device(device),
            resume,
            init,
            session_minutes,
            should_stop,
            checkpoint,
            checkpoint_minutes,
        )
    finally:
        torch.set_num_threads(threads_before)


def choose_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """(fp32 or bf16, why) for `requested` (auto, fp32, bf16) on `device`; warns when
    bf16 is asked for where it is emulated (many times slower than fp32)."""
    fast, reason = fast_bf16(device)
    precision = resolve_precision(requested, device)
    if precision == "bf16" and not fast:
        warnings.warn(f"bf16 requested, but {reason}: training will be slow", stacklevel=3)
    return precision, f"{requested}: {reason}"


def _train(
    config: SamConfig,
    cfg: TrainConfig,
    max_steps: int | None,
    log: Callable[[str], None],
    device: torch.device,
    resume: dict[str, Any] | None,
    init: tuple[dict[str, torch.Tensor], str] | None,
    session_minutes: float | None,
    should_stop: Callable[[], bool],
    checkpoint: Callable[[dict[str, Any]], None] | None,
    checkpoint_minutes: float,
) -> Trained:
    # Each step allocates and frees tensors of tens of MB (attention scores, saved
    # activations); reusing freed blocks instead of faulting in fresh pages made a
    # patch-8 encoder step 2x faster here.
    keep_freed_memory()
    # Before the first tensor op, so that the OpenMP threads inherit it (sam_core.denormals).
    flush_denormals()
    precision, why = choose_precision(cfg.precision, device)
    log(f"precision {precision} ({why}); device {device}")
    tuner = ThreadTuner(cfg.threads)
    model = new_model(config, cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    if init is not None and resume is not None:
        raise ValueError("init and resume exclude each other")
    if init is not None:
        model.load_state_dict(init[0])
    if resume is not None:
        model.load_state_dict(resume["model"])
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    state: dict[str, Any] = {
        "step": 0,
        "seconds": 0.0,
        "step_time": 0.0,
        "runs": [],
        "history": [],
        # Steps since the last log line: a resumed run's first line then averages the
        # same steps as an uninterrupted run's.
        "window": [],
        "init": init[1] if init else "",
    }
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        state.update({k: resume[k] for k in state})
        log(f"resumed at step {state['step']}; {budget_line(state)}")
    elif init is not None:
        log(f"weights from {init[1]}")
    run = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "first_step": state["step"],
        "steps": 0,
        "seconds": 0.0,
        "precision": precision,
        "device": str(device),
        "stopped": "",
    }
    state["runs"] = [*state["runs"], run]
    budget = cfg.minutes * 60.0
    session = math.inf if session_minutes is None else session_minutes * 60.0
    prior_seconds, step_time = float(state["seconds"]), float(state["step_time"])
    history: list[dict[str, float]] = list(state["history"])
    window: list[dict[str, float]] = list(state["window"])
    start = time.perf_counter()
    last_checkpoint = start

    def snapshot() -> dict[str, Any]:
        now = time.perf_counter() - start
        run.update(steps=step - run["first_step"], seconds=now)
        state.update(step=step, seconds=prior_seconds + now, step_time=step_time)
        return {
            "format": STATE_FORMAT,
            "sam_config": dataclasses.asdict(config),
            "train_config": dataclasses.asdict(cfg),
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            **state,
            "runs": [dict(r) for r in state["runs"]],
            "history": list(history),
            "window": [dict(w) for w in window],
        }

    step = int(state["step"])
    stopped = "budget"
    for batch in _batches(cfg, config.image_size, start=step):
        elapsed = time.perf_counter() - start
        total = prior_seconds + elapsed
        if cfg.total_steps and step >= cfg.total_steps:
            break
        if not cfg.total_steps and total + step_time > budget:
            break
        if max_steps is not None and step >= max_steps:
            stopped = "max_steps"
            break
        if elapsed + step_time > session:
            stopped = "session"
            break
        if should_stop():
            stopped = "signal"
            break
        threads = tuner.threads_for(step - run["first_step"])
        torch.set_num_threads(threads)
        progress = step / cfg.total_steps if cfg.total_steps else total / budget
        lr = learning_rate(cfg, step, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, stats = train_step(model, batch.to(device), cfg, generator, precision)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        optimizer.step()
        seconds = time.perf_counter() - start - elapsed
        tuner.record(threads, seconds)
        step_time = 0.9 * step_time + 0.1 * seconds
        step += 1
        window.append(
            {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "threads": threads}
            | stats
        )
        if step % cfg.log_every == 0:
            mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
            mean.update(step=step, seconds=prior_seconds + time.perf_counter() - start, lr=lr)
            history.append(mean)
            window = []
            log(_format_log(mean))
        if checkpoint and time.perf_counter() - last_checkpoint > checkpoint_minutes * 60:
            checkpoint(snapshot())
            last_checkpoint = time.perf_counter()
    run["stopped"] = stopped
    final = snapshot()
    log(f"stopped ({stopped}) at step {step}; {budget_line(final)}")
    model.cpu().eval()
    model.requires_grad_(False)
    return Trained(model, history, final, stopped)


def _format_log(stats: dict[str, float]) -> str:
    rounds = " ".join(f"{stats[k]:.3f}" for k in sorted(stats) if k.startswith("miou_r"))
    return (
        f"step {int(stats['step']):5d}  {stats['seconds']:7.1f}s  lr {stats['lr']:.2e}  "
        f"loss {stats['loss']:.4f} (mask {stats['mask_loss']:.4f} iou {stats['iou_loss']:.4f})  "
        f"mIoU/round {rounds}  |g| {stats['grad_norm']:.2f}  threads {stats['threads']:.1f}  "
        f"image signal {stats.get('image_signal', float('nan')):.3f}"
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output state dict (.pth); default: --resume's file")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--resume",
        metavar="CHECKPOINT",
        help="continue the run that wrote CHECKPOINT (its CHECKPOINT.state.pt): same "
        "recipe, optimiser, schedule and data stream; only the budget, precision, threads "
        "and log interval may be given anew",
    )
    start.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start a new run (fresh optimiser and schedule) from CHECKPOINT's weights",
    )
    # SUPPRESS: only flags given on the command line appear in the namespace, so a
    # resumed run can tell an explicit recipe change from a default.
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        value = getattr(defaults, field.name)
        if isinstance(value, tuple):
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.name == "precision":
            parser.add_argument(
                flag,
                choices=("auto", *PRECISIONS),
                default=argparse.SUPPRESS,
                help="auto (default): bf16 only where it is fast (sam_core.precision)",
            )
        else:
            parser.add_argument(flag, type=type(value), default=argparse.SUPPRESS)
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    parser.add_argument("--max-steps", type=int, default=None, help="total steps, all runs")
    parser.add_argument(
        "--session-minutes",
        type=float,
        default=None,
        help="stop this run after so many minutes, saving its state (the budget stays)",
    )
    parser.add_argument("--checkpoint-minutes", type=float, default=10.0)
    parser.add_argument("--patch-size", type=int, default=None)
    parser.add_argument("--embed-dim", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    args = parser.parse_args(argv)
    if args.out is None and args.resume is None:
        parser.error("--out is required (except with --resume)")
    return args


def config_from_args(args: argparse.Namespace) -> SamConfig:
    """SYNTHETIC_CONFIG with the encoder overrides given on the command line."""
    patch = args.patch_size or SYNTHETIC_CONFIG.patch_size
    dim = args.embed_dim or SYNTHETIC_CONFIG.encoder_embed_dim
    depth = args.depth or SYNTHETIC_CONFIG.encoder_depth
    # Global attention in every third block, ending with one (as the official models).
    global_idx = tuple(range(depth - 1, -1, -3))[::-1]
    return dataclasses.replace(
        SYNTHETIC_CONFIG,
        patch_size=patch,
        encoder_embed_dim=dim,
        encoder_depth=depth,
        encoder_num_heads=max(1, dim // 32),
        encoder_global_attn_indexes=global_idx,
    )


def resumed_config(state: dict[str, Any], given: dict[str, Any]) -> TrainConfig:
    """The saved recipe with the allowed overrides `given`; ValueError for others."""
    saved = dict(state["train_config"])
    saved["kind_probs"] = tuple(saved["kind_probs"])
    changed = sorted(k for k, v in given.items() if k not in RESUMABLE_OVERRIDES and saved[k] != v)
    if changed:
        raise ValueError(
            f"a resumed run keeps its recipe; cannot change {', '.join(changed)} "
            f"(allowed: {', '.join(sorted(RESUMABLE_OVERRIDES))})"
        )
    return TrainConfig(**(saved | given))


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (a CPU build of torch?)")
    return device


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    resume = init = None
    try:
        if args.resume:
            resume = load_training_state(args.resume)
            if any(getattr(args, a) is not None for a in ("patch_size", "embed_dim", "depth")):
                raise ValueError("a resumed run keeps its model config")
            cfg = resumed_config(resume, given)
            config = SamConfig(**resume["sam_config"])
        else:
            cfg = TrainConfig(**given)
            config = config_from_args(args)
        if args.init:
            from sam_core.build import build_sam

            start = build_sam(checkpoint=args.init)
            config = start.config
            init = (start.state_dict(), f"{args.init} sha256 {start.checkpoint_sha256}")
    except ValueError as e:
        print(f"training.train: error: {e}", flush=True)
        return 2
    out = Path(args.out or args.resume)
    device = _device(args.device)
    print(f"config: {config}\ntrain: {cfg}", flush=True)

    stop = {"requested": False}

    def request_stop(signum: int, _frame: object) -> None:
        # Finish the step, save model and state: a stopped run can be resumed.
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print(f"signal {signum}: stopping after this step", flush=True)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        result = train(
            config,
            cfg,
            args.max_steps,
            log=lambda line: print(line, flush=True),
            device=device,
            resume=resume,
            init=init,
            session_minutes=args.session_minutes,
            should_stop=lambda: stop["requested"],
            checkpoint=lambda state: save_training_state(state, state_path(out)),
            checkpoint_minutes=args.checkpoint_minutes,
        )
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    sha256 = save_state_dict(result.model, out)
    save_training_state(result.state, state_path(out))
    print(
        f"saved {out} sha256 {sha256} at step {result.state['step']} ({result.stopped}); "
        f"state {state_path(out)}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
