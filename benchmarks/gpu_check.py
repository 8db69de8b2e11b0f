"""GPU check: CUDA vs CPU parity, bf16 agreement, AMG throughput and peak memory.

Needs only torch, numpy, pillow, scipy and pycocotools (no Beam): it runs on a bare GPU
machine from a checkout. Within 8 minutes on an H200 it measures

1. parity, CUDA fp32 against CPU fp32, on seeded vit_b weights (TF32 off): image
   embeddings, decoder low-res logits and IoU predictions for a batch of point prompts,
   and the automatic mask generator's records on one image (scripts/amg_match.py);
2. bf16 against fp32 on CUDA: embedding error, and the share of fp32 AMG masks that the
   bf16 generator also returns at mask IoU >= 0.9;
3. AMG images/s for seeded vit_b and vit_h, 32x32 grid, 1024x1024 images, encoder batches
   of 1, 4 and 8 images, fp32 and bf16, at the reference's thresholds and at 0, with the
   encoder's own time per image and the peak GPU memory of each configuration.

Figures go to stdout and as JSON to --out (default $OUT/gpu_check.json, else
./gpu_check.json). Exit status 1 if a CUDA-vs-CPU parity check fails (bf16 agreement is
reported as a figure).

On the GPU machine (no registry there; pycocotools is the one missing package), from a
checkout:

    # here, once: a wheel for the GPU machine's Python
    pip download --only-binary :all: --python-version 3.12 --no-deps \\
        --platform manylinux2014_x86_64 -d wheels/ pycocotools
    # there
    pip install --no-index --find-links wheels/ pycocotools
    python benchmarks/gpu_check.py --out "$OUT/gpu_check.json"

`--tiny` runs every code path on the CPU in seconds, with the tiny test config instead
of vit_b / vit_h (CI runs it, so the script never rots); a machine without CUDA runs
the CUDA side on the CPU and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sam_core import VIT_B, VIT_H, AutomaticMaskGenerator, Sam, SamPredictor  # noqa: E402
from sam_core.config import SamConfig  # noqa: E402
from scripts.amg_match import match_records  # noqa: E402
from scripts.seeded import TINY, seeded_state_dict, test_images  # noqa: E402

PERMISSIVE = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
DEFAULTS: dict[str, float] = {}
# Parity tolerances, relative to the largest magnitude of the CPU value (fp32, TF32 off).
TOLERANCE = {"embedding": 1e-3, "low_res_logits": 1e-3, "iou_predictions": 1e-3}
MIN_AMG_MATCH = 0.98  # share of CPU masks with a CUDA mask at IoU >= 0.99 (NMS ties flip)


class Budget:
    """Wall-clock budget: later configurations are skipped, and say so, once spent."""

    def __init__(self, seconds: float) -> None:
        self.start, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


def seeded_model(config: SamConfig, device: torch.device) -> Sam:
    """A model of `config` with the seeded official-format weights of scripts/seeded.py."""
    model = Sam(config)
    model.load_state_dict(seeded_state_dict(config, seed=0))
    model.requires_grad_(False)
    return model.eval().to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    scale = reference.abs().max().clamp(min=1e-12)
    return ((ours.float().cpu() - reference.float().cpu()).abs().max() / scale).item()


def parity(config: SamConfig, device: torch.device, size: int, grid: int) -> dict:
    """CUDA fp32 against CPU fp32, then CUDA bf16 against CUDA fp32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    image = test_images([(size, size)], seed=3)[0]
    rng = np.random.default_rng(0)
    points = rng.uniform(0, size, (16, 1, 2))
    labels = np.ones((16, 1), dtype=np.int64)
    out: dict = {"tf32": False}
    runs = {}
    for name, dev in (("cpu", torch.device("cpu")), ("device", device)):
        model = seeded_model(config, dev)
        predictor = SamPredictor(model, "fp32")
        embedding = predictor.encode([image])[0]
        prediction = predictor.predict(embedding, points, labels, multimask_output=True)
        generator = AutomaticMaskGenerator(
            model, points_per_side=grid, output_mode="coco_rle", **PERMISSIVE
        )
        runs[name] = (embedding.features, prediction, generator.generate(image))
    (cpu_emb, cpu_pred, cpu_amg), (dev_emb, dev_pred, dev_amg) = runs["cpu"], runs["device"]
    errors = {
        "embedding": relative_error(dev_emb, cpu_emb),
        "low_res_logits": relative_error(dev_pred.low_res_logits, cpu_pred.low_res_logits),
        "iou_predictions": relative_error(dev_pred.iou_predictions, cpu_pred.iou_predictions),
    }
    for key, err in errors.items():
        out[key] = {
            "relative_error": err,
            "tolerance": TOLERANCE[key],
            "pass": err <= TOLERANCE[key],
        }
    match = match_records(dev_amg, cpu_amg, min_iou=0.99, score_tol=1e-3)
    share = match.n_matched / max(match.n_reference, 1)
    out["amg"] = {
        "masks_cpu": match.n_reference,
        "masks_device": match.n_ours,
        "matched": match.n_matched,
        "share": share,
        "worst_iou": match.worst_iou,
        "pass": share >= MIN_AMG_MATCH
        and abs(match.n_ours - match.n_reference) <= 0.02 * max(match.n_reference, 1),
    }
    # bf16 against fp32 on the device.
    model = seeded_model(config, device)
    fp32 = SamPredictor(model, "fp32").encode([image])[0].features
    bf16 = SamPredictor(model, "bf16").encode([image])[0].features
    masks = {}
    for precision in ("fp32", "bf16"):
        generator = AutomaticMaskGenerator(
            model, points_per_side=grid, output_mode="coco_rle", precision=precision, **PERMISSIVE
        )
        masks[precision] = generator.generate(image)
    agree = match_records(masks["bf16"], masks["fp32"], min_iou=0.9, score_tol=1.0)
    share = agree.n_matched / max(agree.n_reference, 1)
    out["bf16"] = {
        "embedding_relative_error": relative_error(bf16, fp32),
        "masks_fp32": agree.n_reference,
        "masks_bf16": agree.n_ours,
        "share_at_iou_0.9": share,  # a figure, not a pass/fail: see tests/test_predictor.py
    }
    return out


def throughput(
    name: str,
    config: SamConfig,
    device: torch.device,
    size: int,
    grid: int,
    batches: list[int],
    repeats: int,
    budget: Budget,
) -> list[dict]:
    """AMG images/s per (precision, thresholds, encoder batch), and encoder s/image."""
    model = seeded_model(config, device)
    images = test_images([(size, size)] * max(batches), seed=5)
    rows = []
    for precision in ("fp32", "bf16"):
        for label, thresholds in (("defaults", DEFAULTS), ("thresholds 0", PERMISSIVE)):
            for batch in batches:
                if budget.left() <= 0:
                    print(f"  {name} {precision} {label} batch {batch}: skipped (budget spent)")
                    rows.append(dict(model=name, precision=precision, thresholds=label,
                                     batch=batch, skipped=True))  # fmt: skip
                    continue
                generator = AutomaticMaskGenerator(
                    model,
                    points_per_side=grid,
                    output_mode="coco_rle",
                    precision=precision,
                    encoder_batch_size=batch,
                    **thresholds,
                )
                generator.generate_batch(images[:batch])  # warm-up: kernels, caches
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds, masks = [], 0
                for _ in range(repeats):
                    sync(device)
                    start = time.perf_counter()
                    records = generator.generate_batch(images[:batch])
                    sync(device)
                    seconds.append(time.perf_counter() - start)
                    masks = sum(len(r) for r in records)
                encoder = []
                for _ in range(repeats):
                    sync(device)
                    start = time.perf_counter()
                    generator.predictor.encode(images[:batch])
                    sync(device)
                    encoder.append((time.perf_counter() - start) / batch)
                peak = (
                    torch.cuda.max_memory_allocated(device) / 2**30
                    if device.type == "cuda"
                    else float("nan")
                )
                row = dict(
                    model=name,
                    precision=precision,
                    thresholds=label,
                    batch=batch,
                    images_per_s=batch / statistics.median(seconds),
                    encoder_s_per_image=statistics.median(encoder),
                    masks_per_image=masks / batch,
                    peak_gpu_gb=peak,
                    skipped=False,
                )
                rows.append(row)
                print(
                    f"  {name} {precision:4s} {label:12s} batch {batch}: "
                    f"{row['images_per_s']:7.2f} images/s, encoder "
                    f"{row['encoder_s_per_image'] * 1000:7.1f} ms/image, "
                    f"{row['masks_per_image']:6.0f} masks/image, peak {peak:6.2f} GB",
                    flush=True,
                )
    return rows


def environment(device: torch.device) -> dict:
    env = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "device": str(device),
        "cuda": torch.cuda.is_available(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    return env


def default_out() -> str:
    return os.path.join(os.environ.get("OUT", "."), "gpu_check.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU-sized configs (CI)")
    parser.add_argument("--out", default=None, help="JSON file of the figures")
    parser.add_argument("--budget_s", type=float, default=420.0, help="skip configs past this")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    budget = Budget(args.budget_s)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        parity_config, size, grid, batches = TINY, 128, 4, [1, 2]
        models = [("tiny", TINY)]
        repeats = 1
    else:
        parity_config, size, grid, batches = VIT_B, 1024, 32, [1, 4, 8]
        models = [("vit_b", VIT_B), ("vit_h", VIT_H)]
        repeats = args.repeats
    env = environment(device)
    print("environment:", json.dumps(env))
    if device.type != "cuda":
        print("no CUDA device: the device side runs on the CPU (a check of the code paths)")
    report: dict = {"environment": env, "tiny": args.tiny}
    start = time.monotonic()
    report["parity"] = parity(parity_config, device, 256 if not args.tiny else 96, grid // 2)
    print(f"== parity ({time.monotonic() - start:.0f} s) ==")
    for key, value in report["parity"].items():
        print(f"  {key}: {value}")
    report["throughput"] = []
    for name, config in models:
        section = time.monotonic()
        print(f"== throughput {name}, {size}x{size}, {grid}x{grid} grid ==", flush=True)
        report["throughput"] += throughput(
            name, config, device, size, grid, batches, repeats, budget
        )
        print(f"  ({time.monotonic() - section:.0f} s)")
    report["seconds"] = time.monotonic() - start
    out = args.out or default_out()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1, default=float))
    checks = [v["pass"] for v in report["parity"].values() if isinstance(v, dict) and "pass" in v]
    print(f"wrote {out}; {sum(checks)}/{len(checks)} parity checks pass; "
          f"{report['seconds']:.0f} s")  # fmt: skip
    return 0 if all(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
