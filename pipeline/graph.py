"""The maskmine pipeline graph: URIs -> decoded images -> SAM -> filters -> Parquet.

Only wiring lives here; each step is a transform from `transforms/`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata
import logging
import secrets
import sys
import time
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import TestOptions

from schemas import tables
from transforms.decode import DecodeImages
from transforms.inference import NAMESPACE, MineMasks, ModelSpec, SamModelHandler
from transforms.postprocess import DeduplicateMasks, FilterMasks, QualityThresholds
from transforms.read import ImageURIs
from transforms.sinks import (
    Provenance,
    WriteTable,
    embedding_rows,
    error_row,
    image_row,
    mask_rows,
)

from .options import MaskMineOptions, generator_params, generator_params_json

_LOG = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = ROOT / "pipeline" / "samples"
BUNDLED_CHECKPOINT = ROOT / "sam_core" / "weights" / "sam_synthetic.pth"


class ConfigError(ValueError):
    """A problem with the options, found before the pipeline starts."""


def maskmine_version() -> str:
    try:
        return importlib.metadata.version("maskmine")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def new_run_id() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


def resolve_defaults(options: MaskMineOptions) -> MaskMineOptions:
    """Fill in the bundled samples/model when no input/checkpoint is given."""
    if not options.input:
        if not SAMPLES_DIR.is_dir():
            raise ConfigError(
                f"no --input given and the bundled samples are missing: {SAMPLES_DIR}"
            )
        options.input = [str(SAMPLES_DIR)]
    if options.checkpoint is None and options.model_type is None:
        if not BUNDLED_CHECKPOINT.is_file():
            raise ConfigError(
                "no --checkpoint given and the bundled model is missing "
                f"({BUNDLED_CHECKPOINT}); pass --checkpoint PATH to an official SAM checkpoint"
            )
        options.checkpoint = str(BUNDLED_CHECKPOINT)
    dry_run = options.view_as(TestOptions).dry_run
    # A dry run builds the job offline: don't ask the bucket (the credential
    # lookup alone stalls without a network).
    if options.checkpoint and not dry_run and not FileSystems.exists(options.checkpoint):
        raise ConfigError(f"checkpoint not found: {options.checkpoint}")
    if options.run_id is None:
        options.run_id = new_run_id()
    return options


def existing_image_uris(output: str) -> set[str]:
    """image_uri of every image in the images/ table of earlier runs under `output`."""
    pattern = FileSystems.join(output, "images", "*.parquet")
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # nothing written there yet
        return set()
    done: set[str] = set()
    for meta in matches:
        with FileSystems.open(meta.path) as f:
            done.update(pq.read_table(f, columns=["image_uri"]).column(0).to_pylist())
    return done


class _Progress(beam.DoFn):
    """A progress line on stderr every few seconds (local runs; per process)."""

    def setup(self) -> None:
        self.count, self.start, self.last = 0, time.monotonic(), 0.0

    def process(self, element):
        self.count += 1
        now = time.monotonic()
        if now - self.last > 5.0:
            self.last = now
            rate = self.count / max(now - self.start, 1e-9)
            print(f"maskmine: {self.count} images mined, {rate:.2f} images/s", file=sys.stderr)
        yield element


def build_pipeline(pipeline: beam.Pipeline, options: MaskMineOptions) -> None:
    """Add the whole graph to `pipeline` (options already resolved)."""
    provenance = Provenance(
        run_id=options.run_id,
        generator_params=generator_params_json(options),
        maskmine_version=maskmine_version(),
        created_at=dt.datetime.now(dt.timezone.utc),
    )
    read = pipeline | "ReadURIs" >> ImageURIs(options.input)
    uris = read["uris"]
    if options.skip_existing:
        done = existing_image_uris(options.output)
        _LOG.info("skip_existing: %d images already mined under %s", len(done), options.output)
        uris = uris | "SkipExisting" >> beam.Filter(lambda uri, done=done: uri not in done)

    decoded = uris | "Decode" >> DecodeImages(max_pixels=options.max_pixels)
    handler = SamModelHandler(
        ModelSpec(options.checkpoint, options.model_type, options.precision, options.device),
        generator_params(options),
        max_batch_size=options.inference_batch_size,
        share_across_processes=options.share_model_across_processes,
        keep_embeddings=options.embeddings,
    )
    mined = decoded["images"] | "Mine" >> MineMasks(handler)
    kept = (
        mined["mined"]
        | "Progress" >> beam.ParDo(_Progress())
        | "Quality"
        >> FilterMasks(
            QualityThresholds(
                options.min_predicted_iou,
                options.min_stability_score,
                options.min_area_fraction,
                options.max_area_fraction,
            )
        )
        | "Dedup" >> DeduplicateMasks(options.dedup_iou_thresh, options.dedup_by)
    )
    run = options.run_id
    if options.embeddings:
        (
            kept
            | "EmbeddingRows" >> beam.FlatMap(embedding_rows, provenance)
            | "WriteEmbeddings"
            >> WriteTable(options.output, "embeddings", tables.EMBEDDINGS_SCHEMA, run)
        )
        # Later steps need no pixels of embeddings: drop them before the other sinks.
        kept = kept | "DropEmbeddings" >> beam.Map(
            lambda im: dataclasses.replace(im, embedding=None)
        )
    (
        kept
        | "MaskRows" >> beam.FlatMap(mask_rows, provenance)
        | "WriteMasks" >> WriteTable(options.output, "masks", tables.MASKS_SCHEMA, run)
    )
    (
        kept
        | "ImageRows" >> beam.Map(image_row, provenance)
        | "WriteImages" >> WriteTable(options.output, "images", tables.IMAGES_SCHEMA, run)
    )
    (
        (read["errors"], decoded["errors"], mined["errors"])
        | "AllErrors" >> beam.Flatten()
        | "ErrorRows" >> beam.Map(error_row, provenance)
        | "WriteErrors" >> WriteTable(options.output, "errors", tables.ERRORS_SCHEMA, run)
    )


def summarize(result) -> str:
    """Counters of a finished run, one line each."""
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    lines = []
    for counter in sorted(query["counters"], key=lambda c: c.key.metric.name):
        lines.append(f"  {counter.key.metric.name}: {counter.committed}")
    for dist in query["distributions"]:
        d = dist.committed
        if d and d.count:
            lines.append(
                f"  {dist.key.metric.name}: mean {d.mean:.0f}, min {d.min}, max {d.max} "
                f"({d.count} images)"
            )
    return "\n".join(lines)
