"""The maskmine pipeline graph: URIs -> decoded images -> SAM -> filters -> Parquet.

Only wiring lives here; each step is a transform from `transforms/`. Batch runs read every
input once and write one set of files per run; `--streaming` runs read Pub/Sub and/or watch
the inputs, mine each distinct image (by content) once, and write one set per window.
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
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions, TestOptions

from schemas import tables
from transforms.decode import DecodeImages
from transforms.inference import (
    NAMESPACE,
    MineMasks,
    ModelSpec,
    SamModelHandler,
    check_generator_params,
    check_model_spec,
)
from transforms.postprocess import DeduplicateMasks, FilterMasks, QualityThresholds
from transforms.read import ImageURIs, is_manifest, location_problem
from transforms.sinks import (
    Provenance,
    WriteTable,
    WriteWindowedTable,
    embedding_rows,
    error_row,
    image_row,
    mask_rows,
)
from transforms.streaming import (
    DeduplicateByContent,
    ReadPubSubURIs,
    WatchImageURIs,
    output_windowing,
    resume_watching,
    stop_watching,
)

from .options import (
    LocalRunOptions,
    MaskMineOptions,
    StreamingOptions,
    generator_params,
    generator_params_json,
)

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


def is_streaming(options: MaskMineOptions) -> bool:
    return bool(options.view_as(StandardOptions).streaming)


LOCAL_RUNNERS = (None, "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")


def is_local(options: MaskMineOptions) -> bool:
    return options.view_as(StandardOptions).runner in LOCAL_RUNNERS


def _check_streaming(options: MaskMineOptions) -> None:
    stream = options.view_as(StreamingOptions)
    pubsub = [f for f in ("input_subscription", "input_topic") if getattr(stream, f)]
    if not is_streaming(options):
        if pubsub:
            raise ConfigError(f"--{pubsub[0]} reads Pub/Sub: it needs --streaming")
        return
    if len(pubsub) > 1:
        raise ConfigError("give one of --input_subscription and --input_topic, not both")
    if pubsub and options.input and is_local(options):
        raise ConfigError(
            "locally, watch --input folders or read Pub/Sub, not both (no local runner of "
            "Beam runs the two together; Dataflow does)"
        )
    if not pubsub and not options.input:
        raise ConfigError(
            "--streaming needs a source: --input_subscription, --input_topic, or --input "
            "folders/patterns to watch"
        )
    manifests = [i for i in options.input or [] if is_manifest(i)]
    if manifests:
        raise ConfigError(
            f"--streaming watches folders and patterns, not manifests: {manifests[0]}"
        )
    if stream.window_s <= 0 or stream.allowed_lateness_s < 0 or stream.poll_interval_s <= 0:
        raise ConfigError(
            "need --window_s > 0, --allowed_lateness_s >= 0 and --poll_interval_s > 0"
        )
    if stream.stop_after_s is not None and stream.stop_after_s <= 0:
        raise ConfigError(f"--stop_after_s must be positive, got {stream.stop_after_s}")


def _check_parts(options: MaskMineOptions) -> None:
    every = options.view_as(LocalRunOptions).commit_every
    if every is None:
        return
    if every < 1:
        raise ConfigError(f"--commit_every must be >= 1, got {every}")
    if is_streaming(options):
        raise ConfigError(
            "--commit_every is for batch runs: a streaming run writes each window's files "
            "as the window closes"
        )
    if not is_local(options):
        raise ConfigError(
            "--commit_every is for local runs: Dataflow retries failed work itself and "
            "writes a batch job's files when it succeeds (split a huge job into several "
            "jobs instead)"
        )


def _check_locations(options: MaskMineOptions) -> None:
    """Fail at once on a remote bucket that is missing or unreadable, not after mining."""
    named = [("--output", options.output)]
    named += [("--checkpoint", options.checkpoint)] if options.checkpoint else []
    named += [("--input", i.removeprefix("manifest:")) for i in options.input or []]
    for flag, uri in named:
        problem = location_problem(uri)
        if problem:
            raise ConfigError(f"{flag} {uri}: {problem}")


def quality_thresholds(options: MaskMineOptions) -> QualityThresholds:
    """The filters after the generator (ValueError for an impossible area range)."""
    return QualityThresholds(
        options.min_predicted_iou,
        options.min_stability_score,
        options.min_area_fraction,
        options.max_area_fraction,
    )


def _check_values(options: MaskMineOptions) -> None:
    """Fail at once, naming the flag, on values the workers would only reject after
    reading and decoding (on Dataflow, after starting GPU workers and retrying)."""
    # An empty --input would resolve to the working directory; an empty --output too.
    if any(not i.strip() for i in options.input or []):
        raise ConfigError("--input is empty: give a folder, glob pattern or manifest")
    if not (options.output or "").strip():
        raise ConfigError("--output is empty: give a folder (local or gs://)")
    if options.checkpoint is not None and not options.checkpoint.strip():
        raise ConfigError("--checkpoint is empty: give a SAM state dict (local or gs://)")
    for flag, value in [
        ("inference_batch_size", options.inference_batch_size),
        ("max_pixels", options.max_pixels),
    ]:
        if value < 1:
            raise ConfigError(f"--{flag} must be >= 1, got {value}")
    if not 0.0 <= options.dedup_iou_thresh <= 1.0:
        raise ConfigError(
            f"--dedup_iou_thresh must be in [0, 1] (1.0 turns it off), "
            f"got {options.dedup_iou_thresh}"
        )
    try:
        check_generator_params(generator_params(options))
    except ValueError as e:
        raise ConfigError(f"--{e}") from e
    try:
        quality_thresholds(options)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if options.checkpoint is None and options.model_type is not None:
        # Without a checkpoint the model would be built with random weights, and its
        # images recorded as mined (and then skipped by --skip_existing).
        raise ConfigError(
            f"--model_type {options.model_type} needs --checkpoint (the official "
            f"state dict); without one the model would have random weights"
        )


def resolve_defaults(options: MaskMineOptions) -> MaskMineOptions:
    """Check the options and fill in the bundled samples/model when none are given.

    Remote locations are checked here (bucket exists and can be listed, checkpoint exists)
    unless this is a dry run, which must work offline.
    """
    # Startup checks use the run's options (credentials, project) for FileSystems.
    FileSystems.set_options(options)
    _check_values(options)
    _check_streaming(options)
    _check_parts(options)
    if not options.input and not is_streaming(options):
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
    if not dry_run:
        _check_locations(options)
        if options.checkpoint and not FileSystems.exists(options.checkpoint):
            raise ConfigError(f"checkpoint not found: {options.checkpoint}")
    try:
        check_model_spec(ModelSpec(options.checkpoint, options.model_type))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if options.run_id is None:
        options.run_id = new_run_id()
    elif not dry_run and not is_streaming(options):
        _check_run_id_is_new(options.output, options.run_id)
    return options


def _check_run_id_is_new(output: str, run_id: str) -> None:
    """A batch run names its files part-RUN_ID-*: a --run_id used before under `output`
    would replace that run's files (streaming file names carry a random firing token)."""
    for table in tables.SCHEMAS:
        pattern = FileSystems.join(output, table, f"part-{run_id}-*")
        try:
            taken = FileSystems.match([pattern])[0].metadata_list
        except Exception:  # a missing local folder: nothing written there yet
            continue
        if taken:
            raise ConfigError(
                f"--run_id {run_id}: {output} already holds that run's files "
                f"({taken[0].path}); a new run with that id would replace them, so pick "
                f"another --run_id (or leave it out)"
            )


def mined_images_pattern(output: str) -> str | None:
    """Glob of the images/ files of earlier runs under `output`; None if there are none.

    A listing that fails (permissions, a network error) is a ConfigError: a resume that
    quietly found nothing would mine everything again.
    """
    pattern = FileSystems.join(output, "images", "*.parquet")
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:
        raise ConfigError(f"--skip_existing: cannot list {pattern}: {e}") from e
    return pattern if found else None


class _SkipMined(beam.DoFn):
    """Drops the URIs already in earlier runs' images/ table (side input) and counts them."""

    def __init__(self) -> None:
        self.skipped = beam.metrics.Metrics.counter(NAMESPACE, "images_skipped_existing")

    def process(self, uri, mined):
        if uri in mined:
            self.skipped.inc()
            return
        yield uri


class _CountFailures(beam.DoFn):
    """Counts the inputs that reach the errors table, whatever their stage."""

    def __init__(self) -> None:
        self.failed = beam.metrics.Metrics.counter(NAMESPACE, "inputs_failed")

    def process(self, failure):
        self.failed.inc()
        yield failure


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


def _provenance(options: MaskMineOptions) -> Provenance:
    return Provenance(
        run_id=options.run_id,
        generator_params=generator_params_json(options),
        maskmine_version=maskmine_version(),
        created_at=dt.datetime.now(dt.timezone.utc),
    )


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
        | "Progress" >> beam.ParDo(_Progress())
        | "Quality" >> FilterMasks(quality_thresholds(options))
        | "Dedup" >> DeduplicateMasks(options.dedup_iou_thresh, options.dedup_by)
    )
    return kept, mined["errors"]


def _write_tables(
    kept, errors, options: MaskMineOptions, provenance: Provenance, writer, stamp: bool = False
) -> None:
    """Rows of every table, each written by writer(output, table, schema, run_id).

    stamp: created_at of each row is when it is made (streaming), not the run's start.
    """
    run = options.run_id

    def rows(fn):
        return (lambda x, p: fn(x, p.stamped())) if stamp else fn

    written = []  # file names of the sinks the images table must wait for
    if options.embeddings:
        written.append(
            kept
            | "EmbeddingRows" >> beam.FlatMap(rows(embedding_rows), provenance)
            | "WriteEmbeddings"
            >> writer(options.output, "embeddings", tables.EMBEDDINGS_SCHEMA, run)
        )
        # Later steps need no pixels of embeddings: drop them before the other sinks.
        kept = kept | "DropEmbeddings" >> beam.Map(
            lambda im: dataclasses.replace(im, embedding=None)
        )
    written.append(
        kept
        | "MaskRows" >> beam.FlatMap(rows(mask_rows), provenance)
        | "WriteMasks" >> writer(options.output, "masks", tables.MASKS_SCHEMA, run)
    )
    image_rows = kept | "ImageRows" >> beam.Map(rows(image_row), provenance)
    if not stamp:
        # Batch: the images table says what is mined (--skip_existing trusts it), so its
        # files appear only after the masks' and embeddings' files are in place: the side
        # inputs hold this step until those sinks have finished. (Streaming writes each
        # window's tables on their own.)
        image_rows = image_rows | "AfterMasks" >> beam.Map(
            lambda row, *files: row, *[beam.pvalue.AsList(w) for w in written]
        )
    image_rows | "WriteImages" >> writer(options.output, "images", tables.IMAGES_SCHEMA, run)
    (
        errors
        | "CountFailures" >> beam.ParDo(_CountFailures())
        | "ErrorRows" >> beam.Map(rows(error_row), provenance)
        | "WriteErrors" >> writer(options.output, "errors", tables.ERRORS_SCHEMA, run)
    )


def _skip_existing(uris, options: MaskMineOptions):
    """URIs minus those in OUTPUT/images/ of earlier runs.

    The earlier URIs are read by the pipeline (a side input), not by the launcher: held
    in the job graph, millions of them would exceed Dataflow's request size.
    """
    if not options.skip_existing:
        return uris
    pattern = mined_images_pattern(options.output)
    if pattern is None:
        _LOG.info("skip_existing: nothing mined yet under %s", options.output)
        return uris
    mined = (
        uris.pipeline
        | "ReadMinedURIs" >> beam.io.ReadFromParquet(pattern, columns=["image_uri"])
        | "KeyMinedURIs" >> beam.Map(lambda row: (row["image_uri"], None))
    )
    return uris | "SkipExisting" >> beam.ParDo(_SkipMined(), beam.pvalue.AsDict(mined))


def build_pipeline(pipeline: beam.Pipeline, options: MaskMineOptions) -> None:
    """Add the whole graph to `pipeline` (options already resolved)."""
    if is_streaming(options):
        _build_streaming(pipeline, options)
        return
    read = pipeline | "ReadURIs" >> ImageURIs(options.input)
    decoded = _skip_existing(read["uris"], options) | "Decode" >> DecodeImages(
        max_pixels=options.max_pixels
    )
    kept, inference_errors = _mine(decoded["images"], options)
    errors = (read["errors"], decoded["errors"], inference_errors) | "AllErrors" >> beam.Flatten()
    _write_tables(kept, errors, options, _provenance(options), WriteTable)


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
            >> WatchImageURIs(options.input, stream.poll_interval_s, stream.stop_after_s)
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
    _write_tables(kept, errors, options, _provenance(options), WriteWindowedTable, stamp=True)


def new_pipeline(options: MaskMineOptions) -> beam.Pipeline:
    """The pipeline for `options`, on the runner that can run its graph.

    A local (DirectRunner) streaming run that watches --input folders runs on Beam's
    in-process FnApiRunner: Beam 2.77's streaming DirectRunner rejects every splittable
    DoFn, the watcher included (see transforms.streaming.WatchImageURIs). The FnApiRunner
    runs each stage to completion, so such a run writes its windows' files once watching
    stops (--stop_after_s, or the first Ctrl-C: see `run_until_done`), each window's rows
    in its own files as on Dataflow. Pub/Sub sources stay on the streaming DirectRunner,
    which reads them live (one Pub/Sub source and watched folders together need Dataflow).
    """
    stream = options.view_as(StreamingOptions)
    pubsub = stream.input_subscription or stream.input_topic
    if not (is_streaming(options) and options.input and is_local(options)) or pubsub:
        return beam.Pipeline(options=options)  # (both: refused by resolve_defaults)
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return beam.Pipeline(runner=FnApiRunner(), options=options)


def run_until_done(pipeline: beam.Pipeline, options: MaskMineOptions):
    """Run `pipeline` and wait for it; Ctrl-C stops it cleanly. Returns the result.

    - A local run that watches --input folders (FnApiRunner, blocking in run()): the
      first Ctrl-C stops the polling (`stop_watching`), so the run finishes the files
      already found and writes their windows, as a drained Dataflow job does; a second
      Ctrl-C aborts (KeyboardInterrupt).
    - A local run whose runner returned while running (streaming DirectRunner): Ctrl-C
      cancels it, then KeyboardInterrupt is raised for the caller to exit with.
    - A remote job (Dataflow): Ctrl-C stops waiting and leaves the job running (cancel or
      drain it with gcloud), then KeyboardInterrupt is raised.
    Anything else: KeyboardInterrupt as usual.
    """
    import signal
    import threading

    watching = is_streaming(options) and bool(options.input) and is_local(options)
    interrupts = 0

    def on_interrupt(signum, frame):
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1 and watching:
            print(
                "maskmine: Ctrl-C: no longer watching the inputs; finishing the images "
                "found so far and writing their files (Ctrl-C again to abort)",
                file=sys.stderr,
            )
            stop_watching()
            return
        raise KeyboardInterrupt

    if watching:
        resume_watching()  # a run stopped earlier in this process must not stop this one
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_interrupt) if in_main else None
    try:
        result = pipeline.run()
        try:
            result.wait_until_finish()
        except KeyboardInterrupt:
            if is_local(options):
                print("maskmine: cancelling the pipeline", file=sys.stderr)
                result.cancel()
            else:
                print(
                    "maskmine: stopped waiting; the job keeps running (cancel or drain it "
                    "with `gcloud dataflow jobs cancel|drain`)",
                    file=sys.stderr,
                )
            raise
        return result
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


def counters(result) -> dict[str, int]:
    """This project's counters of a finished run, by name (committed values)."""
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    return {c.key.metric.name: c.committed for c in query["counters"]}


def summarize(result) -> str:
    """Counters and distributions of a finished run, one line each."""
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))
    lines = [f"  {name}: {value}" for name, value in sorted(counters(result).items())]
    for dist in query["distributions"]:
        d = dist.committed
        if d and d.count:
            # RunInference's own distributions (model load time, size) count loads.
            unit = "images" if dist.key.metric.name.endswith("per_image") else "samples"
            lines.append(
                f"  {dist.key.metric.name}: mean {d.mean:.0f}, min {d.min}, max {d.max} "
                f"({d.count} {unit})"
            )
    return "\n".join(lines)
