"""GPU check: CUDA vs CPU parity, bf16 agreement, AMG throughput and peak GPU memory.

One script for the day a GPU (an NVIDIA H200) is lent for ~15 minutes. It needs only
torch, numpy, pillow, scipy and pycocotools (no Beam, no pyarrow) and is budgeted to end
within 8 minutes on an H200: --budget_s (default 420 s from the start) skips the configs
predicted not to fit, and lists them. Sections, each timed:

1. environment: torch, CUDA device name and capability, torch's CPU capability, bf16
   support;
2. parity, CUDA fp32 against CPU fp32 with TF32 off, on seeded vit_b weights
   (scripts/seeded.py): image embeddings (SamPredictor.encode), decoder low-res logits
   and IoU predictions for a batch of point prompts (SamPredictor.predict, end to end
   and from the same CPU embedding), and the automatic mask generator's records on one
   image (scripts/amg_match.py), PASS/FAIL against printed tolerances;
3. bf16 against fp32 on CUDA: embedding error and the share of fp32 AMG masks that the
   bf16 generator also returns at mask IoU >= 0.9 (reported, not enforced);
4. throughput: the encoder alone (ms/image) and AMG images/s for seeded vit_b and vit_h,
   32x32 grid, 1024x1024 images, encoder batches of 1, 4 and 8 images
   (generate_batch on as many images), fp32 and bf16, at the reference's thresholds
   and at 0 (random weights keep few masks otherwise), with masks kept and peak GPU
   memory per configuration (median of up to 3 timed runs after a warm-up).

Figures are printed as tables and written as JSON to --out (a file, or a folder to hold
gpu_check.json; default $OUT/gpu_check.json if $OUT is set, else ./gpu_check.json), also
after each section, so a run cut short keeps what it measured. Exit status 1 if a parity
check fails, 2 if the run cannot start.

The GPU machine has torch with CUDA, numpy, scipy, pillow and pyarrow but no pycocotools
and no internet. Here, once, in the repository root (wheels/ is git-ignored, so it is
never committed: carry it to the device explicitly. The wheel is abi3: any CPython >= 3.12
there; for 3.11 use --python-version 3.11, which yields a cp311 wheel):

    pip download --only-binary :all: --python-version 3.12 \\
        --platform manylinux2014_x86_64 --no-deps -d wheels/ pycocotools
    # -> wheels/pycocotools-2.0.11-cp312-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64
    #    .manylinux_2_28_x86_64.whl (its one dependency, numpy, is there already)

then on the GPU machine, from the repository root (the tiny run first, well under a
minute, goes through every CUDA code path before the full run spends its minutes):

    python -m pip install --no-index --find-links wheels/ pycocotools && \\
        python benchmarks/gpu_check.py --tiny --out "$OUT/tiny.json"; \\
        python benchmarks/gpu_check.py --out "$OUT"

`--tiny` runs every code path on the CPU (or the GPU, if there is one) in seconds:
scripts/seeded.py's TINY config and a slightly larger one instead of vit_b / vit_h,
128x128 images, a 4x4 grid. CI runs it (tests/test_gpu_check.py) so the script does
not rot; without CUDA both parity sides are the CPU and GPU-only figures are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    from sam_core import (
        VIT_B,
        VIT_H,
        AutomaticMaskGenerator,
        ImageEmbedding,
        Prediction,
        Sam,
        SamConfig,
        SamPredictor,
    )
    from scripts.amg_match import Match, match_records
    from scripts.seeded import TINY, test_images
except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] != "pycocotools":
        raise
    print(
        "pycocotools is not installed: bring its wheel (see the docstring of "
        "benchmarks/gpu_check.py or infra/GPU_CHECK.md), then "
        "python -m pip install --no-index --find-links wheels/ pycocotools",
        file=sys.stderr,
    )
    raise SystemExit(2) from e

REFERENCE_THRESHOLDS: dict[str, float] = {}  # the generator's defaults: 0.88 and 0.95
ZERO_THRESHOLDS = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
THRESHOLDS = (("reference", REFERENCE_THRESHOLDS), ("zero", ZERO_THRESHOLDS))
# The parity/agreement generator keeps every candidate (thresholds 0, no NMS): both sides
# then return the same 3 * grid**2 masks and each is compared with its counterpart,
# instead of near-duplicates of random weights being settled by NMS ties.
EVERY_CANDIDATE = dict(ZERO_THRESHOLDS, box_nms_thresh=1.0)

# Parity tolerances: max |cuda - cpu| / max |cpu| (fp32, TF32 off: only summation order
# differs, which should stay far below). The decoder fed the same embedding has no
# encoder error to inherit, hence the tighter bound.
TOL_END_TO_END = 1e-3
TOL_DECODER_ONLY = 1e-4
# AMG: masks paired at IoU >= 0.99 with both scores within 1e-3; a pixel at a threshold
# can move a small mask's stability score by 1/area, hence a share and not all.
AMG_MIN_IOU, AMG_SCORE_TOL, AMG_MIN_SHARE = 0.99, 1e-3, 0.99
# bf16 agreement: masks at IoU >= 0.9, predicted IoU / stability within 0.1 (the scaled
# seeded IoU head spreads predictions over several units).
BF16_MIN_IOU, BF16_SCORE_TOL = 0.9, 0.1

# A narrower stand-in for vit_h in tiny mode: deeper than TINY, two global blocks.
TINY_LARGE = dataclasses.replace(
    TINY, encoder_embed_dim=96, encoder_depth=4, encoder_global_attn_indexes=(1, 3)
)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of a run; the full and the tiny plan differ only here.

    parity_hw: (H, W) of the parity image (not square: resize and padding run).
    parity_grid, parity_prompts: AMG grid side and number of 2-point prompts in parity.
    models: (name, config) of the throughput models; the first one is the parity model.
    image_side, grid, batch_sizes: throughput images (px), AMG grid side, encoder batches.
    max_repeats, config_s: timed runs per config: as many as fit in config_s (s) after the
        warm-up, at least 1, at most max_repeats.
    budget_s: default --budget_s.
    """

    name: str
    models: tuple[tuple[str, SamConfig], ...]
    parity_hw: tuple[int, int]
    parity_grid: int
    parity_prompts: int
    image_side: int
    grid: int
    batch_sizes: tuple[int, ...]
    max_repeats: int
    config_s: float
    budget_s: float


FULL = Plan(
    name="full",
    models=(("vit_b", VIT_B), ("vit_h", VIT_H)),
    parity_hw=(768, 1024),
    parity_grid=16,
    parity_prompts=64,
    image_side=1024,
    grid=32,
    batch_sizes=(1, 4, 8),
    max_repeats=3,
    config_s=6.0,
    budget_s=420.0,
)
TINY_PLAN = Plan(
    name="tiny",
    models=(("tiny", TINY), ("tiny_large", TINY_LARGE)),
    parity_hw=(96, 128),
    parity_grid=4,
    parity_prompts=8,
    image_side=128,
    grid=4,
    batch_sizes=(1, 4, 8),
    max_repeats=2,
    config_s=0.2,
    budget_s=300.0,
)


class Budget:
    """Wall-clock budget (s) from the start of the run; configs that no longer fit are
    skipped and listed."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.perf_counter(), seconds
        self.skipped: list[str] = []
        # Largest seconds per image seen for a kind of config, to predict the next one.
        self.per_image_s: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, kind: str, n_images: int, config_s: float, label: str) -> bool:
        """Whether a warm-up plus the timed runs (~config_s) of `n_images` fit."""
        per_image = self.per_image_s.get(kind, 0.0)
        needed = per_image * n_images + max(config_s, per_image * n_images)
        if self.left() > needed:
            return True
        self.skipped.append(label)
        print(f"  SKIPPED {label}: {self.left():.0f} s of budget left, ~{needed:.0f} s needed")
        return False

    def observe(self, kind: str, seconds_per_image: float) -> None:
        self.per_image_s[kind] = max(self.per_image_s.get(kind, 0.0), seconds_per_image)


def seeded_model(config: SamConfig, seed: int, device: torch.device) -> Sam:
    """scripts.seeded.seeded_state_dict's recipe, run on `device` in eval mode.

    On the CPU the weights are exactly seeded_state_dict(config, seed)'s (a test checks);
    on CUDA they come from the CUDA generator (same distributions, other values), which
    spares vit_h a 2.5 GB CPU initialisation and copy.
    """
    torch.manual_seed(seed)
    with torch.device(device):
        model = Sam(config)
    gen = torch.Generator(device).manual_seed(seed + 1)
    for name, tensor in model.state_dict().items():
        if name.endswith(("pos_embed", "rel_pos_h", "rel_pos_w")):
            tensor.copy_(torch.randn(tensor.shape, generator=gen, device=device) * 0.2)
        elif "output_hypernetworks_mlps" in name and name.endswith("layers.2.weight"):
            tensor.mul_(50.0)
        elif name == "mask_decoder.iou_prediction_head.layers.2.weight":
            tensor.mul_(20.0)
    model.requires_grad_(False)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(wall seconds of fn(), its result), with the device's queue drained both sides."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


@contextlib.contextmanager
def peak_memory(device: torch.device, into: dict) -> Iterator[None]:
    """Sets into["peak_gpu_gb"] (max allocated during the block, resident weights
    included) and into["resident_gpu_gb"] (allocated at its start); None on the CPU."""
    if device.type != "cuda":
        into["peak_gpu_gb"] = into["resident_gpu_gb"] = None
        yield
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    into["resident_gpu_gb"] = torch.cuda.memory_allocated(device) / 2**30
    yield
    sync(device)
    into["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 2**30


def scaled_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference|."""
    ours, reference = ours.detach().float().cpu(), reference.detach().float().cpu()
    scale = reference.abs().max().clamp(min=1e-12)
    return ((ours - reference).abs().max() / scale).item()


def max_abs_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return (ours.detach().float().cpu() - reference.detach().float().cpu()).abs().max().item()


def relative_l2(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """||ours - reference|| / ||reference|| (Frobenius)."""
    ours, reference = ours.detach().float().cpu(), reference.detach().float().cpu()
    return ((ours - reference).norm() / reference.norm().clamp(min=1e-12)).item()


def check(name: str, value: float, tolerance: float, note: str) -> dict:
    """A parity check: PASS when value <= tolerance."""
    result = "PASS" if value <= tolerance else "FAIL"
    print(f"  {result} {name}: {value:.3g} (tolerance {tolerance:g}; {note})")
    return {"check": name, "value": value, "tolerance": tolerance, "result": result}


def match_summary(match: Match) -> dict:
    return {
        "masks_ours": match.n_ours,
        "masks_reference": match.n_reference,
        "matched": match.n_matched,
        "share": match.n_matched / max(match.n_reference, 1),
        "worst_iou": match.worst_iou,
        "worst_predicted_iou_error": match.worst_predicted_iou_error,
        "worst_stability_error": match.worst_stability_error,
    }


def environment(device: torch.device) -> dict:
    env: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_cuda": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "gpu": None,
        "gpu_capability": None,
        "gpu_memory_gb": None,
        "bf16_supported": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = props.name
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["gpu_memory_gb"] = props.total_memory / 2**30
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    for key, value in env.items():
        print(f"  {key}: {value}")
    if device.type != "cuda":
        print("  no CUDA device: both parity sides run on the CPU, GPU memory is not measured")
    return env


def bf16_usable(device: torch.device) -> bool:
    # CPU autocast always runs bf16 (emulated, slowly, without AMX/AVX512-BF16: fine at
    # tiny sizes).
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


def amg_records(model: Sam, image: np.ndarray, grid: int, precision: str) -> list[dict]:
    generator = AutomaticMaskGenerator(
        model,
        points_per_side=grid,
        output_mode="coco_rle",
        precision=precision,
        **EVERY_CANDIDATE,
    )
    return generator.generate(image)


def decode(predictor: SamPredictor, embedding: ImageEmbedding, prompts: tuple) -> Prediction:
    coords, labels = prompts
    return predictor.predict(embedding, coords, labels, multimask_output=True)


def parity_and_bf16(plan: Plan, device: torch.device) -> tuple[dict, Sam]:
    """CUDA fp32 vs CPU fp32 (TF32 off), then bf16 vs fp32 on the device.

    Returns the figures and the device model (reused for throughput).
    """
    name, config = plan.models[0]
    h, w = plan.parity_hw
    image = test_images([(h, w)], seed=3)[0]
    rng = np.random.default_rng(0)
    # (B, 2, 2) xy: a foreground and a background point per prompt.
    coords = rng.uniform(0.0, 1.0, (plan.parity_prompts, 2, 2)) * np.array([w, h])
    labels = np.tile(np.array([[1, 0]], dtype=np.int64), (plan.parity_prompts, 1))
    prompts = (coords, labels)

    cpu_model = seeded_model(config, seed=0, device=torch.device("cpu"))
    dev_model = copy.deepcopy(cpu_model).to(device)
    print(
        f"  model {name} (seeded on the CPU: scripts.seeded weights), image {h}x{w}, "
        f"{plan.parity_prompts} 2-point prompts, AMG {plan.parity_grid}x"
        f"{plan.parity_grid} grid keeping every candidate"
    )
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    # TF32 rounds fp32 matmul inputs to 10 mantissa bits: off, the CUDA side computes
    # what the CPU computes up to summation order.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print("  TF32 off for parity (torch.backends.cuda.matmul / cudnn .allow_tf32 = False)")
    try:
        cpu_pred, dev_pred = SamPredictor(cpu_model, "fp32"), SamPredictor(dev_model, "fp32")
        cpu_emb, dev_emb = cpu_pred.encode([image])[0], dev_pred.encode([image])[0]
        cpu_out, dev_out = decode(cpu_pred, cpu_emb, prompts), decode(dev_pred, dev_emb, prompts)
        same_emb = ImageEmbedding(
            cpu_emb.features.to(device), cpu_emb.original_size, cpu_emb.input_size
        )
        dev_same = decode(dev_pred, same_emb, prompts)
        cpu_amg = amg_records(cpu_model, image, plan.parity_grid, "fp32")
        dev_amg = amg_records(dev_model, image, plan.parity_grid, "fp32")
        del cpu_model, cpu_pred
        checks = [
            check(
                "embedding",
                scaled_error(dev_emb.features, cpu_emb.features),
                TOL_END_TO_END,
                "max abs error / max |cpu|",
            ),
            check(
                "low_res_logits",
                scaled_error(dev_out.low_res_logits, cpu_out.low_res_logits),
                TOL_END_TO_END,
                "end to end",
            ),
            check(
                "iou_predictions",
                scaled_error(dev_out.iou_predictions, cpu_out.iou_predictions),
                TOL_END_TO_END,
                "end to end",
            ),
            check(
                "decoder_low_res_logits",
                scaled_error(dev_same.low_res_logits, cpu_out.low_res_logits),
                TOL_DECODER_ONLY,
                "same CPU embedding on both",
            ),
            check(
                "decoder_iou_predictions",
                scaled_error(dev_same.iou_predictions, cpu_out.iou_predictions),
                TOL_DECODER_ONLY,
                "same CPU embedding on both",
            ),
        ]
        match = match_records(dev_amg, cpu_amg, min_iou=AMG_MIN_IOU, score_tol=AMG_SCORE_TOL)
        amg = match_summary(match)
        # The count is fixed by the grid (every candidate is kept): a difference is a bug.
        unmatched = 1.0 - amg["share"] if match.n_ours == match.n_reference else 1.0
        checks.append(
            check(
                "amg_unmatched_share",
                unmatched,
                1.0 - AMG_MIN_SHARE,
                f"{match.n_matched}/{match.n_reference} cpu masks matched "
                f"(device {match.n_ours}) at IoU >= {AMG_MIN_IOU}, scores within "
                f"{AMG_SCORE_TOL}; worst IoU {match.worst_iou:.4f}",
            )
        )
        parity = {"model": name, "device": str(device), "tf32": False, "checks": checks, "amg": amg}

        if not bf16_usable(device):
            print(f"  bf16: skipped, {device} does not support bf16")
            return parity | {"bf16": {"skipped": "bf16 not supported"}}, dev_model
        bf16_pred = SamPredictor(dev_model, "bf16")
        bf16_emb = bf16_pred.encode([image])[0]
        bf16_out = decode(bf16_pred, bf16_emb, prompts)
        agree = match_records(
            amg_records(dev_model, image, plan.parity_grid, "bf16"),
            dev_amg,
            min_iou=BF16_MIN_IOU,
            score_tol=BF16_SCORE_TOL,
        )
        bf16 = {
            "embedding_relative_l2": relative_l2(bf16_emb.features, dev_emb.features),
            "embedding_scaled_max_error": scaled_error(bf16_emb.features, dev_emb.features),
            "low_res_logits_scaled_max_error": scaled_error(
                bf16_out.low_res_logits, dev_out.low_res_logits
            ),
            "iou_predictions_max_error": max_abs_error(
                bf16_out.iou_predictions, dev_out.iou_predictions
            ),
            "amg": match_summary(agree),
            "min_iou": BF16_MIN_IOU,
            "score_tol": BF16_SCORE_TOL,
        }
        print(
            f"  bf16 vs fp32 on {device} (reported, not enforced): embedding relative L2 "
            f"{bf16['embedding_relative_l2']:.3g}, max error / scale "
            f"{bf16['embedding_scaled_max_error']:.3g}; AMG {agree.n_matched}/"
            f"{agree.n_reference} fp32 masks matched by bf16 ({bf16['amg']['share']:.1%}) "
            f"at IoU >= {BF16_MIN_IOU}, scores within {BF16_SCORE_TOL}"
        )
        return parity | {"bf16": bf16}, dev_model
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
        print(f"  TF32 restored for throughput: matmul {flags[0]}, cudnn {flags[1]}")


def repeat_timed(
    fn: Callable[[], Any], device: torch.device, plan: Plan
) -> tuple[float, list[float], Any]:
    """Warm-up, then as many timed runs as fit in plan.config_s (1 to max_repeats).

    Returns (warm-up s, timed runs s, the last result).
    """
    warm, result = timed(fn, device)
    repeats = max(1, min(plan.max_repeats, int(plan.config_s / max(warm, 1e-9))))
    times = []
    for _ in range(repeats):
        seconds, result = timed(fn, device)
        times.append(seconds)
    return warm, times, result


def encoder_row(
    name: str,
    model: Sam,
    precision: str,
    images: list[np.ndarray],
    plan: Plan,
    device: torch.device,
) -> dict:
    """The image encoder alone on a batch of already prepared (padded) images."""
    predictor = SamPredictor(model, precision)
    batch, _ = predictor.prepare(images)

    def run() -> torch.Tensor:
        with torch.inference_mode(), predictor.autocast():
            return model.image_encoder(batch)

    row: dict[str, Any] = {"model": name, "precision": precision, "batch": len(images)}
    with peak_memory(device, row):
        warm, times, _ = repeat_timed(run, device, plan)
    row |= {
        "warmup_s": warm,
        "times_s": times,
        "ms_per_image": 1000 * statistics.median(times) / len(images),
    }
    return row


def amg_row(
    name: str,
    model: Sam,
    precision: str,
    thresholds: tuple[str, dict],
    images: list[np.ndarray],
    plan: Plan,
    device: torch.device,
) -> dict:
    """generate_batch on len(images) images with encoder_batch_size = len(images)."""
    label, params = thresholds
    generator = AutomaticMaskGenerator(
        model,
        points_per_side=plan.grid,
        output_mode="coco_rle",  # what the pipeline writes: no mask decoding per record
        precision=precision,
        encoder_batch_size=len(images),
        **params,
    )
    row: dict[str, Any] = {
        "model": name,
        "precision": precision,
        "thresholds": label,
        "batch": len(images),
    }
    with peak_memory(device, row):
        warm, times, records = repeat_timed(lambda: generator.generate_batch(images), device, plan)
    median = statistics.median(times)
    row |= {
        "warmup_s": warm,
        "times_s": times,
        "median_s": median,
        "images_per_s": len(images) / median,
        "masks_per_image": sum(len(r) for r in records) / len(images),
    }
    return row


def fmt_gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def build_model(name: str, config: SamConfig, device: torch.device, report: dict) -> Sam:
    seconds, model = timed(lambda: seeded_model(config, seed=0, device=device), device)
    report["models"][name] = {
        "build_s": seconds,
        "weights": f"seeded on {device} (scripts.seeded recipe)",
    }
    print(f"  built {name} on {device} in {seconds:.1f} s")
    return model


def throughput(
    plan: Plan, device: torch.device, first_model: Sam, budget: Budget, report: dict
) -> None:
    """Encoder and AMG rows into report["encoder"] / report["amg"], most informative
    first, so a spent budget drops the least informative configs: the reference
    thresholds, then thresholds 0 (RLE-encoding every mask on the CPU: seconds per
    image whatever the GPU), each by batch size, then model, then precision."""
    precisions = ["fp32"] + (["bf16"] if bf16_usable(device) else [])
    if len(precisions) == 1:
        print(f"  bf16 configs skipped: {device} does not support bf16")
    side = plan.image_side
    images = test_images([(side, side)] * max(plan.batch_sizes), seed=5)
    models: dict[str, Sam] = {plan.models[0][0]: first_model}
    configs = itertools.product(THRESHOLDS, plan.batch_sizes, plan.models, precisions)
    for (label, params), batch, (name, config), precision in configs:
        tag = f"{name} {precision} thresholds={label} batch={batch}"
        kind = f"amg {name} {label}"
        if not budget.fits(kind, batch, plan.config_s, tag):
            continue
        if name not in models:
            models[name] = build_model(name, config, device, report)
        model = models[name]
        try:
            if label == THRESHOLDS[0][0]:  # the encoder once per model, precision, batch
                row = encoder_row(name, model, precision, images[:batch], plan, device)
                report["encoder"].append(row)
                print(
                    f"  encoder {name} {precision} batch {batch}: "
                    f"{row['ms_per_image']:.1f} ms/image, peak {fmt_gb(row['peak_gpu_gb'])} GB"
                )
            row = amg_row(name, model, precision, (label, params), images[:batch], plan, device)
        except torch.cuda.OutOfMemoryError as e:
            # Keep going: a smaller batch or the other model may still fit.
            report["amg"].append(
                {
                    "model": name,
                    "precision": precision,
                    "thresholds": label,
                    "batch": batch,
                    "error": str(e).splitlines()[0],
                }
            )
            print(f"  {tag}: out of memory")
            torch.cuda.empty_cache()
            continue
        budget.observe(kind, max(row["warmup_s"], row["median_s"]) / batch)
        report["amg"].append(row)
        print(
            f"  amg {tag}: {row['images_per_s']:.2f} images/s (median of "
            f"{len(row['times_s'])}, warm-up {row['warmup_s']:.2f} s), "
            f"{row['masks_per_image']:.0f} masks/image, peak {fmt_gb(row['peak_gpu_gb'])} GB",
            flush=True,
        )


def print_tables(report: dict) -> None:
    print("\n== summary ==")
    env = report["environment"]
    print(
        f"torch {env['torch']} | {env['gpu'] or 'no GPU'} (sm {env['gpu_capability']}) | "
        f"CPU {env['cpu_capability']} | CUDA bf16 supported: {env['bf16_supported']}"
    )
    parity = report.get("parity")
    if parity:
        print(f"\nparity {parity['device']} vs cpu, fp32, {parity['model']}, TF32 off")
        print(f"{'check':26s} {'value':>10s} {'tolerance':>10s}  result")
        for c in parity["checks"]:
            print(f"{c['check']:26s} {c['value']:10.3g} {c['tolerance']:10.3g}  {c['result']}")
        bf16 = parity.get("bf16", {})
        if "amg" in bf16:
            print(
                f"bf16: embedding rel L2 {bf16['embedding_relative_l2']:.3g}; "
                f"{bf16['amg']['share']:.1%} of fp32 AMG masks matched at IoU >= "
                f"{bf16['min_iou']}"
            )
    if report["encoder"]:
        print(f"\n{'encoder':12s} {'prec':5s} {'batch':>5s} {'ms/image':>9s} {'peak GB':>8s}")
        for r in report["encoder"]:
            print(
                f"{r['model']:12s} {r['precision']:5s} {r['batch']:5d} "
                f"{r['ms_per_image']:9.1f} {fmt_gb(r['peak_gpu_gb']):>8s}"
            )
    if report["amg"]:
        print(
            f"\n{'amg':12s} {'prec':5s} {'thresh':9s} {'batch':>5s} {'img/s':>8s} "
            f"{'median s':>9s} {'masks/img':>9s} {'peak GB':>8s}"
        )
        for r in report["amg"]:
            head = f"{r['model']:12s} {r['precision']:5s} {r['thresholds']:9s} {r['batch']:5d}"
            if "error" in r:
                print(f"{head} {r['error']}")
                continue
            print(
                f"{head} {r['images_per_s']:8.2f} {r['median_s']:9.3f} "
                f"{r['masks_per_image']:9.1f} {fmt_gb(r['peak_gpu_gb']):>8s}"
            )
    for label in report["skipped"]:
        print(f"skipped (budget): {label}")
    print("sections (s): " + ", ".join(f"{k} {v:.1f}" for k, v in report["sections_s"].items()))


def output_path(out: str | None) -> Path:
    """--out as a file, or a folder (existing, or written with a trailing /) for
    gpu_check.json; default $OUT/gpu_check.json, else ./gpu_check.json."""
    if out is None:
        out = os.environ.get("OUT") or "."
    path = Path(out)
    if path.is_dir() or out.endswith(("/", os.sep)):
        path = path / "gpu_check.json"
    return path


def write(report: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs, seconds on a CPU")
    parser.add_argument("--out", help="JSON file, or a folder for gpu_check.json")
    parser.add_argument(
        "--budget_s", type=float, help="skip configs that would end past this (s from start)"
    )
    parser.add_argument("--device", help="default: cuda if available, else cpu (tiny only)")
    parser.add_argument(
        "--threads", type=int, help="CPU threads (default: 1 with --tiny, else torch's)"
    )
    args = parser.parse_args(argv)
    plan = TINY_PLAN if args.tiny else FULL
    # Tiny ops gain nothing from threads, and on a shared, busy 2-core machine spinning
    # OpenMP threads slowed the tiny run 10x (measured: 2 min with 2 threads, 12 s with 1).
    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    budget = Budget(args.budget_s if args.budget_s is not None else plan.budget_s)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type != "cuda" and not args.tiny:
        print("no CUDA device: the full check is for a GPU; use --tiny to check the code paths")
        return 2
    path = output_path(args.out)
    report: dict[str, Any] = {
        "mode": plan.name,
        "plan": dataclasses.asdict(plan),
        "budget_s": budget.seconds,
        "sections_s": {},
        "models": {},
        "encoder": [],
        "amg": [],
        "skipped": budget.skipped,
    }

    def section(title: str, fn: Callable[[], Any]) -> Any:
        print(f"== {title} ==", flush=True)
        start = time.perf_counter()
        try:
            return fn()
        finally:
            report["sections_s"][title] = time.perf_counter() - start
            print(f"== {title}: {report['sections_s'][title]:.1f} s ==", flush=True)
            write(report, path)

    report["environment"] = section("environment", lambda: environment(device))
    report["parity"], model = section("parity", lambda: parity_and_bf16(plan, device))
    report["models"][plan.models[0][0]] = {"weights": "seeded on cpu (= scripts.seeded)"}
    section("throughput", lambda: throughput(plan, device, model, budget, report))
    report["seconds"] = budget.elapsed()
    failed = [c["check"] for c in report["parity"]["checks"] if c["result"] != "PASS"]
    report["passed"] = not failed
    write(report, path)
    print_tables(report)
    print(
        f"\nwrote {path}; {report['seconds']:.0f} s; parity "
        + ("PASS" if not failed else f"FAIL: {', '.join(failed)}")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
