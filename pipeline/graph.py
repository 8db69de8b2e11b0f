"""The maskmine pipeline graph: URIs -> decoded images -> SAM -> filters -> Parquet.

Only wiring: each step is a transform from `transforms/`, options are checked and
defaulted by `config.resolve_defaults` before `build_pipeline` is called, and `run.py`
runs the result. Batch runs read every input once and write one set of files per run;
`--streaming` runs read Pub/Sub and/or watch the inputs, mine each distinct image (by
content) once, and write one set per window.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Sequence

import apache_beam as beam

from schemas import layout
from transforms.content_dedup import DeduplicateByContent
from transforms.decode import DecodeImages
from transforms.inference import MineMasks, ModelSpec, SamModelHandler
from transforms.monitoring import CountFailures, Progress
from transforms.postprocess import DeduplicateMasks, FilterMasks
from transforms.pubsub import ReadPubSubURIs
from transforms.read import ImageURIs
from transforms.records import Failure, Provenance
from transforms.rows import embedding_rows, error_row, image_row, mask_rows
from transforms.sinks import WriteTable, WriteWindowedTable
from transforms.skip_existing import SkipExisting
from transforms.watch import WatchImageURIs
from transforms.windowing import output_windowing

from .config import (
    generator_params,
    is_streaming,
    mined_images_pattern,
    options_extensions,
    provenance,
    quality_thresholds,
)
from .options import MaskMineOptions, StreamingOptions

_LOG = logging.getLogger(__name__)


def _mine(images, options: MaskMineOptions):
    """DecodedImage -> (kept MinedImage after the filters, inference Failures)."""
    handler = SamModelHandler(
        ModelSpec(options.checkpoint, options.model_type, options.precision, options.device),
        generator_params(options),
        max_batch_size=options.inference_batch_size,
        share_across_processes=options.share_model_across_processes,
        keep_embeddings=options.embeddings,
    )
    mined = images | "Mine" >> MineMasks(handler)
    kept = (
        mined["mined"]
        | "Progress" >> beam.ParDo(Progress())
        | "Quality" >> FilterMasks(quality_thresholds(options))
        | "Dedup" >> DeduplicateMasks(options.dedup_iou_thresh, options.dedup_by)
    )
    return kept, mined["errors"]


# Test hook: a batch run whose id is $MASKMINE_TEST_HOLD_RUN stops once its masks/ files
# are committed, before its images/ rows are written: it creates $MASKMINE_TEST_HOLD_FILE
# and waits there for good, so that a test can SIGKILL it in that window.
HOLD_RUN, HOLD_FILE = "MASKMINE_TEST_HOLD_RUN", "MASKMINE_TEST_HOLD_FILE"


def _held(row, hold: str | None):
    if hold:
        with open(hold, "a"):
            pass
        threading.Event().wait()  # until the test kills this process
    return row


def _write_tables(
    kept, errors, options: MaskMineOptions, run: Provenance, writer, stamp: bool = False
) -> None:
    """Rows of every table, each written by writer(output, table, run_id).

    stamp: created_at of each row is when it is made (streaming), not the run's start.
    """
    run_id = options.run_id

    def rows(fn):
        return (lambda x, p: fn(x, p.stamped())) if stamp else fn

    written = []  # file names of the sinks the images table must wait for
    if options.embeddings:
        written.append(
            kept
            | "EmbeddingRows" >> beam.FlatMap(rows(embedding_rows), run)
            | "WriteEmbeddings" >> writer(options.output, layout.EMBEDDINGS, run_id)
        )
        # Later steps need no pixels of embeddings: drop them before the other sinks.
        kept = kept | "DropEmbeddings" >> beam.Map(
            lambda im: dataclasses.replace(im, embedding=None)
        )
    written.append(
        kept
        | "MaskRows" >> beam.FlatMap(rows(mask_rows), run)
        | "WriteMasks" >> writer(options.output, layout.MASKS, run_id)
    )
    image_rows = kept | "ImageRows" >> beam.Map(rows(image_row), run)
    if not stamp:
        # Batch: the images table says what is mined (--skip_existing trusts it), so its
        # files appear only after the masks' and embeddings' files are in place: the side
        # inputs hold this step until those sinks have finished. (Streaming writes each
        # window's tables on their own.)
        hold = os.environ.get(HOLD_FILE) if os.environ.get(HOLD_RUN) == run_id else None
        image_rows = image_rows | "AfterMasks" >> beam.Map(
            lambda row, *files: _held(row, hold), *[beam.pvalue.AsList(w) for w in written]
        )
    image_rows | "WriteImages" >> writer(options.output, layout.IMAGES, run_id)
    (
        errors
        | "CountFailures" >> beam.ParDo(CountFailures())
        | "ErrorRows" >> beam.Map(rows(error_row), run)
        | "WriteErrors" >> writer(options.output, layout.ERRORS, run_id)
    )


def _skip_existing(uris, options: MaskMineOptions):
    """URIs minus those in OUTPUT/images/ of earlier runs (with --skip_existing)."""
    if not options.skip_existing:
        return uris
    pattern = mined_images_pattern(options.output)
    if pattern is None:
        _LOG.info("skip_existing: nothing mined yet under %s", options.output)
        return uris
    return uris | "SkipExisting" >> SkipExisting(pattern)


def build_pipeline(
    pipeline: beam.Pipeline, options: MaskMineOptions, listing_errors: Sequence[Failure] = ()
) -> None:
    """Add the whole graph to `pipeline` (options already resolved). listing_errors: batch
    only, Failures of a listing done on the launcher, for the errors table."""
    if is_streaming(options):
        _build_streaming(pipeline, options)
        return
    read = pipeline | "ReadURIs" >> ImageURIs(
        options.input, options_extensions(options), listing_errors=listing_errors
    )
    decoded = _skip_existing(read["uris"], options) | "Decode" >> DecodeImages(
        max_pixels=options.max_pixels
    )
    kept, inference_errors = _mine(decoded["images"], options)
    errors = (read["errors"], decoded["errors"], inference_errors) | "AllErrors" >> beam.Flatten()
    _write_tables(kept, errors, options, provenance(options), WriteTable)


def _build_streaming(pipeline: beam.Pipeline, options: MaskMineOptions) -> None:
    stream = options.view_as(StreamingOptions)
    uris, read_errors = [], []
    if stream.input_subscription or stream.input_topic:
        pubsub = pipeline | "ReadPubSub" >> ReadPubSubURIs(
            stream.input_subscription, stream.input_topic
        )
        uris.append(pubsub.uris)
        read_errors.append(pubsub.errors)
    if options.input:
        uris.append(
            pipeline
            | "WatchInputs"
            >> WatchImageURIs(
                options.input,
                stream.poll_interval_s,
                stream.stop_after_s,
                options_extensions(options),
            )
        )
    mine_stream(uris | "ReadURIs" >> beam.Flatten(), read_errors, options)


def mine_stream(uris, read_errors: list, options: MaskMineOptions) -> None:
    """Streaming URIs (str, timestamped) -> decode -> first image per content hash ->
    fixed windows -> SAM -> one set of files per window. read_errors: Failure PCollections
    of the sources (global window).

    Windowing comes after the run-wide dedup (which needs the global window) and before
    RunInference, whose batching keeps each batch inside one window: rows then carry their
    image's window to the sinks.
    """
    stream = options.view_as(StreamingOptions)
    decoded = _skip_existing(uris, options) | "Decode" >> DecodeImages(
        max_pixels=options.max_pixels
    )
    images = (
        decoded["images"]
        | "DedupContent" >> DeduplicateByContent()
        | "Window" >> output_windowing(stream.window_s, stream.allowed_lateness_s)
    )
    kept, inference_errors = _mine(images, options)
    early_errors = (
        [*read_errors, decoded["errors"]]
        | "EarlyErrors" >> beam.Flatten()
        | "WindowErrors" >> output_windowing(stream.window_s, stream.allowed_lateness_s)
    )
    errors = (early_errors, inference_errors) | "AllErrors" >> beam.Flatten()
    _write_tables(kept, errors, options, provenance(options), WriteWindowedTable, stamp=True)
