"""Mask quality of the whole pipeline on held-out synthetic scenes with exact ground truth.

Writes scenes from `training.scenes` with seeds EVAL_SEED_START, +1, ... (never used in
training) as PNGs to a temp folder, mines them with the maskmine pipeline on DirectRunner,
reads the masks table back and matches it against the ground-truth objects:

recall@0.5/0.75, mean best IoU, masks per image, the same by object area, a control, and
the calibration of the kept masks' predicted IoUs: mean |predicted IoU - actual IoU against
the best-matching object|, binned, with a reliability plot (see training/quality.py, which
scores them).

  python benchmarks/quality.py [--scenes 20] [--checkpoint PATH | --random_weights]
                               [--size 256] [--generator scenes|shifted]
                               [--reliability_png PATH]
                               [any maskmine flag, e.g. --pred_iou_thresh 0.2]

`--generator shifted` draws the scenes with `training.shifted_scenes` instead, a generator
the model never trained on (other shapes, fills, sizes, lighting): how far the model's
skill carries beyond its own generator's look.

Generator and filter flags are the pipeline's own, with its defaults. Prints one line per
scene, the overall figures, the calibration and a threshold sweep: what each pair of
(pred_iou_thresh, stability_score_thresh) would keep of this run's masks, and how many of
those match an object (run at thresholds 0 to sweep them all; the demo's thresholds come
from it).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exports.tables import read_table  # noqa: E402
from pipeline.cli import main as maskmine  # noqa: E402
from pipeline.config import BUNDLED_CHECKPOINT  # noqa: E402
from training.quality import (  # noqa: E402
    GENERATORS,
    SceneScore,
    calibration,
    format_calibration,
    format_report,
    format_sweep,
    random_checkpoint,
    rles_by_image,
    score,
    threshold_sweep,
    values_by_image,
    write_scenes,
)
from training.scenes import EVAL_SEED_START  # noqa: E402


def run_quality(
    count: int,
    checkpoint: str,
    flags: list[str] | tuple[str, ...] = (),
    size: tuple[int, int] = (256, 256),
    workdir: Path | None = None,
    generator: str = "scenes",
) -> tuple[list[SceneScore], list[SceneScore]]:
    """Write `count` held-out scenes of `generator` (training.quality.GENERATORS), mine
    them with `checkpoint` through the CLI, score them; returns the scores and the
    control scores (see training.quality.score)."""
    with tempfile.TemporaryDirectory(prefix="maskmine-quality-") as tmp:
        root = Path(workdir or tmp)
        truth = write_scenes(root / "scenes", count, size, generator=generator)
        args = [f"--input={root / 'scenes'}", f"--output={root / 'out'}"]
        status = maskmine([*args, f"--checkpoint={checkpoint}", *flags])
        if status:
            raise SystemExit(f"maskmine exited with status {status}")
        columns = ["image_uri", "segmentation", "predicted_iou", "stability_score"]
        rows = read_table(str(root / "out"), "masks", columns).to_pylist()
    names = list(truth)
    pred = rles_by_image(rows, names)
    predicted = values_by_image(rows, names, "predicted_iou")
    stability = values_by_image(rows, names, "stability_score")
    return (
        score(pred, truth, predicted=predicted, stability=stability),
        score(pred, truth, control=True),
    )


def reliability_png(cal: dict, title: str) -> bytes:
    """PNG bytes of the reliability plot: mean actual IoU (vs the best-matching object)
    per bin of predicted IoU, the diagonal of a calibrated model, and the masks per bin."""
    fig = Figure(figsize=(6.4, 6.4), dpi=100, layout="constrained")
    ax, counts = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    edges = cal["bin_edges"]
    centres = (edges[:-1] + edges[1:]) / 2
    filled = cal["bin_count"] > 0
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="calibrated")
    ax.plot(
        cal["bin_predicted"][filled],
        cal["bin_actual"][filled],
        "o-",
        color="#c44e52",
        label=f"this model (mean |error| {cal['mean_abs_error']:.3f})",
    )
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="actual IoU (best-matching object)", title=title)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    counts.bar(centres, cal["bin_count"], width=np.diff(edges) * 0.9, color="#4c72b0")
    counts.set(xlabel="predicted IoU (bin)", ylabel="masks")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other flags go to the pipeline (maskmine --help lists them).",
    )
    parser.add_argument("--scenes", type=int, default=20, help="held-out scenes to mine")
    parser.add_argument("--size", type=int, default=256, help="scene side in pixels")
    parser.add_argument(
        "--generator",
        choices=sorted(GENERATORS),
        default="scenes",
        help="scenes: the trainer's generator (held-out seeds); shifted: one it never saw",
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", default=str(BUNDLED_CHECKPOINT))
    model.add_argument(
        "--random_weights",
        action="store_true",
        help="seeded random weights of the bundled model's config (a no-skill baseline)",
    )
    parser.add_argument("--workdir", type=Path, help="keep scenes and outputs here")
    parser.add_argument(
        "--reliability_png",
        type=Path,
        default=Path(tempfile.gettempdir()) / "maskmine-quality-reliability.png",
        help="where to write the reliability plot (default: in the temp folder)",
    )
    args, flags = parser.parse_known_args(argv)
    kind = "scenes" if args.generator == "scenes" else f"{args.generator} scenes"
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="maskmine-random-") as tmp:
        checkpoint = (
            str(random_checkpoint(Path(tmp) / "random.pth"))
            if args.random_weights
            else args.checkpoint
        )
        print(
            f"quality: {args.scenes} held-out {kind} "
            f"(seeds {EVAL_SEED_START}..), "
            f"{args.size}px, checkpoint {'random weights' if args.random_weights else checkpoint}"
            f"{', flags ' + ' '.join(flags) if flags else ''}",
            flush=True,
        )
        scores, control = run_quality(
            args.scenes, checkpoint, flags, (args.size, args.size), args.workdir, args.generator
        )
    print(format_report(scores, control))
    cal = calibration(scores)
    print(format_calibration(cal, len(scores)))
    print(format_sweep(threshold_sweep(scores), len(scores)))
    flags_text = " ".join(flags) or "default thresholds"
    args.reliability_png.write_bytes(
        reliability_png(cal, f"{args.scenes} held-out {kind}, {flags_text}")
    )
    print(f"reliability plot: {args.reliability_png}")
    print(f"took {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
