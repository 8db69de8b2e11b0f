"""Calibrate a model's IoU head on the automatic mask generator's own masks.

Training scores each prompt's masks against the object the prompt was sampled in, at the
decoder's low resolution. The AMG asks the head about grid points anywhere in the image
and its masks are judged against the best-matching object at full resolution; there the
trained head over-predicts. This refits the head's last linear layer by least squares
(MSE training of that layer, solved in closed form, ridge-regularised) on the masks the
AMG keeps at thresholds 0 on *training* scenes (seeds below EVAL_SEED_START, so the
held-out benchmark stays held out): for each kept mask, the layer's input (the head's
hidden features of its prompt) against the mask's actual IoU with its best-matching object.
Each multimask output gets its own row; the single-mask output (row 0) is left as it is.
The refit changes scores, hence which masks box NMS keeps, so it repeats for `--rounds`.

  python -m training.calibrate --checkpoint IN.pth --out OUT.pth [--scenes 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import torch

from sam_core import AutomaticMaskGenerator, build_sam, save_state_dict
from sam_core.sam import Sam

from .evaluate import iou_matrix
from .scenes import EVAL_SEED_START, Scene, generate_scene

# First training-range seed the calibration scenes use (any seed < EVAL_SEED_START is a
# training scene; these are drawn from the top of that range).
CALIBRATION_SEED_START = EVAL_SEED_START - 1000


def kept_mask_samples(
    model: Sam, scenes: Sequence[Scene], **amg_kwargs
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the AMG on `scenes`; per kept mask: the IoU head's last-layer input (F,),
    the multimask output it came from (1..M), its predicted IoU and its actual IoU with
    the best-matching ground-truth object. Returns (N, F), (N,), (N,), (N,) arrays."""
    head = model.mask_decoder.iou_prediction_head.layers[-1]
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = head.register_forward_hook(lambda _m, inp, out: seen.append((inp[0], out)))
    generator = AutomaticMaskGenerator(model, **amg_kwargs)
    features, outputs, predicted, actual = [], [], [], []
    try:
        for scene in scenes:
            seen.clear()
            records = generator.generate(scene.image)
            if not records:
                continue
            x = torch.cat([f for f, _ in seen]).double().numpy()
            y = torch.cat([o for _, o in seen]).numpy()
            # Kept masks carry their predicted IoU bit for bit: find the (prompt, output)
            # of each; values shared by two candidates are dropped as ambiguous.
            where: dict[float, list[tuple[int, int]]] = {}
            for row, col in np.ndindex(len(y), y.shape[1] - 1):
                where.setdefault(float(y[row, col + 1]), []).append((row, col + 1))
            masks = np.stack([r["segmentation"] for r in records])
            best = iou_matrix(scene.masks, masks).max(axis=0)
            for record, iou in zip(records, best, strict=True):
                found = where.get(float(np.float32(record["predicted_iou"])), [])
                if len(found) == 1:
                    row, col = found[0]
                    features.append(x[row])
                    outputs.append(col)
                    predicted.append(record["predicted_iou"])
                    actual.append(iou)
    finally:
        hook.remove()
    return np.array(features), np.array(outputs), np.array(predicted), np.array(actual)


def refit_last_layer(
    model: Sam, features: np.ndarray, outputs: np.ndarray, actual: np.ndarray, ridge: float
) -> None:
    """Least-squares refit of the IoU head's last layer, per multimask output, in place."""
    head = model.mask_decoder.iou_prediction_head.layers[-1]
    weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
    for col in np.unique(outputs):
        rows = outputs == col
        x = np.hstack([features[rows], np.ones((rows.sum(), 1))])
        # Ridge towards the current weights: few samples move an output little.
        prior = np.append(weight[col].double().numpy(), bias[col].item())
        gram = x.T @ x + ridge * len(x) * np.eye(x.shape[1])
        solved = np.linalg.solve(gram, x.T @ actual[rows] + ridge * len(x) * prior)
        weight[col] = torch.from_numpy(solved[:-1]).to(weight.dtype)
        bias[col] = float(solved[-1])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--scenes", type=int, default=30, help="training scenes per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ridge", type=float, default=1e-3, help="per-sample L2 strength")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    model = build_sam(checkpoint=args.checkpoint)
    size = (args.size, args.size)
    amg = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    start = time.monotonic()
    for r in range(args.rounds + 1):
        # Fresh scenes each round; the last round only measures the final head.
        seeds = range(
            CALIBRATION_SEED_START + r * args.scenes, CALIBRATION_SEED_START + (r + 1) * args.scenes
        )
        scenes = [generate_scene(seed, size) for seed in seeds]
        features, outputs, predicted, actual = kept_mask_samples(model, scenes, **amg)
        print(
            f"round {r}: {len(actual)} kept masks on {len(scenes)} training scenes "
            f"(seeds {seeds.start}..{seeds.stop - 1}): mean |predicted - actual| "
            f"{np.abs(predicted - actual).mean():.3f}, mean predicted {predicted.mean():.3f}, "
            f"mean actual {actual.mean():.3f} ({time.monotonic() - start:.0f} s)",
            flush=True,
        )
        if r < args.rounds:
            refit_last_layer(model, features, outputs, actual, args.ridge)
    sha256 = save_state_dict(model, args.out)
    print(f"saved {args.out} sha256 {sha256}")


if __name__ == "__main__":
    main()
