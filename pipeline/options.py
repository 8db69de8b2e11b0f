"""Command-line options of the maskmine pipeline, as Beam PipelineOptions.

Generator flags carry the reference SamAutomaticMaskGenerator's parameter names
and defaults. Any other Beam option (--runner, --project, ...) passes through.
"""

from __future__ import annotations

import json

from apache_beam.options.pipeline_options import PipelineOptions

from sam_core.precision import CHOICES as PRECISION_CHOICES

# Generator parameter -> (type, default), as in the reference.
GENERATOR_PARAMS: dict[str, tuple[type, object]] = {
    "points_per_side": (int, 32),
    "points_per_batch": (int, 64),
    "pred_iou_thresh": (float, 0.88),
    "stability_score_thresh": (float, 0.95),
    "stability_score_offset": (float, 1.0),
    "box_nms_thresh": (float, 0.7),
    "crop_n_layers": (int, 0),
    "crop_nms_thresh": (float, 0.7),
    "crop_overlap_ratio": (float, 512 / 1500),
    "crop_n_points_downscale_factor": (int, 1),
    "min_mask_region_area": (int, 0),
    # Beyond the reference (sam_core.AutomaticMaskGenerator): "exact" is the reference's.
    "prompt_mode": (str, "exact"),
    "adaptive_stride": (int, 4),
    "adaptive_radius": (int, 2),
}


def parse_bool(value: str) -> bool:
    """Flags take no value on the command line, or an explicit one (flex templates
    pass every parameter as --name=value)."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


class MaskMineOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        io = parser.add_argument_group("input and output")
        io.add_argument(
            "--input",
            action="append",
            default=None,
            help="Glob pattern, folder, or manifest (manifest:PATH, or a .txt/.csv/.parquet "
            "file of URIs); local or gs://. Repeatable. Default: the bundled sample images.",
        )
        io.add_argument("--output", default="out", help="Output folder (local or gs://).")
        io.add_argument(
            "--extensions",
            default=None,
            help="Comma-separated file name extensions that folders and globs list, e.g. "
            "'.jpg,.png'. Default: every format the decoder reads (JPEG, PNG, WebP, BMP, "
            "TIFF, GIF, PPM, JPEG 2000, AVIF, ICO, TGA, PCX). Names without an extension "
            "are always listed (decoding tells images from the rest); other files are "
            "counted as files_skipped_by_extension.",
        )
        io.add_argument(
            "--skip_existing",
            nargs="?",
            const=True,
            default=False,
            type=parse_bool,
            help="Skip images already in OUTPUT/images/ of earlier finished runs.",
        )
        io.add_argument(
            "--max_pixels",
            type=int,
            default=64_000_000,
            help="Reject larger images before decoding them (decompression bombs).",
        )
        io.add_argument("--run_id", default=None, help="Default: UTC time plus a random suffix.")
        io.add_argument(
            "--embeddings",
            nargs="?",
            const=True,
            default=False,
            type=parse_bool,
            help="Also write each image's SAM embedding (float16) to OUTPUT/embeddings/, "
            "for interactive tools to prompt without re-encoding.",
        )

        model = parser.add_argument_group("model")
        model.add_argument(
            "--checkpoint",
            default=None,
            help="Official-format SAM state dict (local or gs://). Default: the bundled model.",
        )
        model.add_argument(
            "--model_type",
            default=None,
            choices=["vit_h", "vit_l", "vit_b"],
            help="Checked against the checkpoint; inferred from its shapes when omitted.",
        )
        model.add_argument(
            "--precision",
            default="auto",
            choices=PRECISION_CHOICES,
            help="auto: bf16 where the hardware runs it fast (CUDA with bf16, a CPU with "
            "AMX or AVX512-BF16), else fp32 (exact). The masks table records the one used.",
        )
        model.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
        model.add_argument(
            "--inference_batch_size",
            type=int,
            default=4,
            help="Images per encoder batch (RunInference max_batch_size).",
        )
        model.add_argument(
            "--share_model_across_processes",
            nargs="?",
            const=True,
            default=False,
            type=parse_bool,
            help="One model copy per machine (GPU workers with several SDK processes).",
        )

        generator = parser.add_argument_group("automatic mask generator")
        extra = {
            "prompt_mode": dict(
                choices=["exact", "adaptive"],
                help="exact: every grid point is a prompt (the reference). adaptive: a "
                "coarse sub-grid first, then only grid points near ones whose masks passed "
                "the filters.",
            ),
            "adaptive_stride": dict(
                help="Adaptive mode: its first round decodes every Nth grid point per side."
            ),
            "adaptive_radius": dict(
                help="Adaptive mode: later rounds decode grid points within N grid steps "
                "(per axis) of a point whose masks passed the filters."
            ),
        }
        for name, (kind, default) in GENERATOR_PARAMS.items():
            generator.add_argument(f"--{name}", type=kind, default=default, **extra.get(name, {}))

        quality = parser.add_argument_group("filters after the generator")
        quality.add_argument(
            "--min_predicted_iou",
            type=float,
            default=None,
            help="Stricter than --pred_iou_thresh, e.g. for a second dataset. Default: off.",
        )
        quality.add_argument("--min_stability_score", type=float, default=None)
        quality.add_argument("--min_area_fraction", type=float, default=0.0)
        quality.add_argument(
            "--max_area_fraction",
            type=float,
            default=1.0,
            help="SA-1B drops masks covering 95%% or more of the image: 0.95.",
        )
        quality.add_argument(
            "--dedup_iou_thresh",
            type=float,
            default=1.0,
            help="NMS within each image across everything kept, after the filters: drop a "
            "mask whose IoU with a better-scored one exceeds this. Default 1.0: off (the "
            "generator's own box NMS at --box_nms_thresh already ran; useful with "
            "--dedup_by mask, or stricter than the generator).",
        )
        quality.add_argument(
            "--dedup_by",
            default="box",
            # transforms.postprocess.DEDUP_BY (not imported: option parsing stays light).
            choices=["box", "mask", "containment"],
            help="what --dedup_iou_thresh compares: box IoU, mask IoU, or containment "
            "(intersection over the smaller mask: a part inside a better-scored whole, or "
            "the reverse, is dropped, one granularity per object).",
        )


def generator_params(options: MaskMineOptions) -> dict:
    """The AutomaticMaskGenerator parameters chosen on the command line."""
    values = options.get_all_options()
    return {name: values[name] for name in GENERATOR_PARAMS}


def generator_params_json(options: MaskMineOptions) -> str:
    """Canonical JSON of the generator parameters, for provenance."""
    params = dict(generator_params(options), precision=options.precision)
    return json.dumps(params, sort_keys=True)


class StreamingOptions(PipelineOptions):
    """Options of `--streaming` runs (Beam's own flag).

    Kept apart from MaskMineOptions: infra/'s flex template lists exactly MaskMineOptions'
    flags (batch jobs); a streaming template adds these.
    """

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        stream = parser.add_argument_group("streaming (with --streaming)")
        stream.add_argument(
            "--input_subscription",
            default=None,
            help="Pub/Sub subscription (projects/P/subscriptions/S) whose messages are image "
            "URIs or GCS object-finalize notifications (JSON with bucket and name).",
        )
        stream.add_argument(
            "--input_topic",
            default=None,
            help="Pub/Sub topic (projects/P/topics/T), read through a temporary subscription.",
        )
        stream.add_argument(
            "--window_s",
            type=int,
            default=60,
            help="Output window in seconds: each window gets its own set of Parquet files.",
        )
        stream.add_argument(
            "--allowed_lateness_s",
            type=int,
            default=3600,
            help="Elements up to this late still reach their window's files (a late firing).",
        )
        stream.add_argument(
            "--poll_interval_s",
            type=float,
            default=30.0,
            help="How often each watched --input (folder or pattern) is listed, in seconds.",
        )
        stream.add_argument(
            "--stop_after_s",
            type=float,
            default=None,
            help="Stop watching --input after this many seconds and finish (tests, demos). "
            "Default: watch until the job is cancelled or drained.",
        )


class LocalRunOptions(PipelineOptions):
    """Options of local batch runs only (not in the flex template: Dataflow retries failed
    work itself and commits a batch job's files when the job succeeds)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        local = parser.add_argument_group("local batch runs")
        local.add_argument(
            "--commit_every",
            type=int,
            default=None,
            help="Mine the inputs in parts of this many images, each part a pipeline run "
            "of its own that writes its files when it finishes, so a run stopped midway "
            "keeps the parts it finished (resume with --skip_existing). Parts are named "
            "RUN_ID-partNNNNN. Each part loads the model again: use hundreds of images or "
            "more per part. Default: one part.",
        )
