"""Startup checks and defaults of a mining run: the one place options are validated.

`resolve_defaults` checks every value a worker would only reject after reading and
decoding (on Dataflow, after starting GPU workers), the sources and output, the run id and
the checkpoint, then fills in the bundled samples and model when none are given. Every
problem is a `ConfigError` naming the flag; the CLI prints it and exits with status 2.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import re
import secrets
import sys
from pathlib import Path

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions, TestOptions

import sam_core
from sam_core.generator import check_params
from sam_core.precision import fast_bf16
from schemas import layout
from transforms.inference import ModelSpec, check_model_spec, resolve_device
from transforms.postprocess import QualityThresholds
from transforms.records import Provenance
from transforms.uris import (
    IMAGE_EXTENSIONS,
    endpoint_problem,
    has_glob,
    is_manifest,
    location_problem,
    normalize_uri,
)

from .claims import RunIdTaken, claim_run_id
from .options import (
    LocalRunOptions,
    MaskMineOptions,
    StreamingOptions,
    generator_params,
    generator_params_json,
)

# Package data (pyproject.toml): in a checkout and in an installed wheel alike.
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
BUNDLED_CHECKPOINT = Path(sam_core.__file__).resolve().parent / "weights" / "sam_synthetic.pth"
# Run ids name files and rows: letters, digits, ".", "_", "-"; no path separators.
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


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


def _check_output_outside_inputs(options: MaskMineOptions) -> None:
    """An --output under a folder that --input lists recursively would be mined by the
    next run over the same inputs (the PNGs `maskmine inspect` writes there)."""
    output = normalize_uri(options.output).rstrip("/") + "/"
    for spec in options.input or []:
        if is_manifest(spec):
            continue
        pattern = normalize_uri(spec)
        if has_glob(pattern):
            if "**" not in pattern:
                continue  # one level of a folder: never the output's nested files
            pattern = re.split(r"[*?\[]", pattern, maxsplit=1)[0]
        folder = pattern.rstrip("/") + "/"
        if output.startswith(folder):
            raise ConfigError(
                f"--output {options.output} is inside --input {spec}: a later run over the "
                f"same inputs would mine the files written there; write elsewhere"
            )


def _check_precision(options: MaskMineOptions) -> None:
    """Warn when --precision bf16 is asked for on a local device that emulates bf16."""
    if options.precision != "bf16" or not is_local(options):
        return  # remote workers' hardware is not this machine's
    fast, reason = fast_bf16(resolve_device(options.device))
    if not fast:
        print(
            f"maskmine: warning: --precision bf16 will be slow here: {reason}. "
            f"Use --precision auto (or fp32).",
            file=sys.stderr,
        )


# A decoder batch returns 3 low-resolution masks per prompt (256 x 256 float32 logits for
# SAM's 1024 input): a lower bound of what one batch holds, whatever happens after.
LOW_RES_BYTES_PER_PROMPT = 3 * 256 * 256 * 4


def _check_batch_memory(options: MaskMineOptions) -> None:
    """Refuse, with the estimate, a --points_per_batch whose decoder outputs alone cannot
    fit in this machine's memory (local runs; a worker's memory is not known here)."""
    params = generator_params(options)
    if not is_local(options) or not params.get("points_per_side"):
        return
    prompts = min(params["points_per_batch"], params["points_per_side"] ** 2)
    need = prompts * LOW_RES_BYTES_PER_PROMPT
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise ConfigError(
            f"--points_per_batch {params['points_per_batch']}: one decoder batch of "
            f"{prompts} prompts needs at least {need / 2**30:.1f} GiB (3 masks of 256x256 "
            f"float32 logits each), more than this machine's {have / 2**30:.1f} GiB; "
            f"use a smaller --points_per_batch (default 64)"
        )


def _check_locations(options: MaskMineOptions) -> None:
    """Fail at once on a remote bucket that is missing or unreadable, not after mining."""
    named = [("--output", options.output)]
    named += [("--checkpoint", options.checkpoint)] if options.checkpoint else []
    named += [("--input", i.removeprefix("manifest:")) for i in options.input or []]
    gcs = [(flag, uri) for flag, uri in named if uri.startswith("gs://")]
    if gcs:
        # Bounded: the client's own retries would leave a dead endpoint silent for minutes.
        problem = endpoint_problem()
        if problem:
            flag, uri = gcs[0]
            raise ConfigError(f"{flag} {uri}: {problem}")
    for flag, uri in named:
        problem = location_problem(uri)
        if problem:
            raise ConfigError(f"{flag} {uri}: {problem}")


def options_extensions(options: MaskMineOptions) -> tuple[str, ...]:
    """The file name extensions a listing keeps (--extensions, or every one the decoder
    reads); names without an extension are always kept."""
    if not options.extensions:
        return IMAGE_EXTENSIONS
    return tuple(e.strip().lower() for e in options.extensions.split(","))


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
    if options.extensions is not None:
        listed = options_extensions(options) if options.extensions.strip() else ("",)
        if not all(e.startswith(".") and len(e) > 1 for e in listed):
            raise ConfigError(
                f"--extensions {options.extensions!r}: give a comma-separated list like "
                f"'.jpg,.png' (default: every extension the decoder reads)"
            )
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
        check_params(**generator_params(options))
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
    _check_batch_memory(options)
    _check_streaming(options)
    _check_parts(options)
    _check_precision(options)
    _check_output_outside_inputs(options)
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
            raise ConfigError(f"--checkpoint {options.checkpoint}: not found")
    try:
        check_model_spec(ModelSpec(options.checkpoint, options.model_type))
    except ValueError as e:
        # Name the flag; the checker's own message may start with the path already.
        reason = str(e).removeprefix(f"{options.checkpoint}: ")
        raise ConfigError(f"--checkpoint {options.checkpoint}: {reason}") from e
    if options.run_id is None:
        options.run_id = new_run_id()
    elif not RUN_ID.match(options.run_id):
        raise ConfigError(
            f"--run_id {options.run_id!r}: use 1-100 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit (it names files under --output)"
        )
    elif not dry_run and not is_streaming(options):
        _check_run_id_is_new(options.output, options.run_id)
    if not dry_run and not is_streaming(options):
        # Last, once every check has passed: a refused run leaves nothing behind.
        try:
            claim_run_id(options.output, options.run_id, local=is_local(options))
        except RunIdTaken as e:
            raise ConfigError(
                f"--run_id {options.run_id}: another run holds that id under "
                f"{options.output} ({e}); pick another --run_id (or leave it out)"
            ) from e
        except OSError as e:
            raise ConfigError(f"--output {options.output}: cannot write there: {e}") from e
    return options


def _check_run_id_is_new(output: str, run_id: str) -> None:
    """A batch run names its files part-RUN_ID-*: a --run_id used before under `output`
    would replace that run's files (streaming file names carry a random firing token)."""
    for table in layout.TABLES:
        pattern = layout.run_glob(output, table, run_id)
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
    pattern = layout.table_glob(output, layout.IMAGES)
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:
        raise ConfigError(f"--skip_existing: cannot list {pattern}: {e}") from e
    return pattern if found else None


def provenance(options: MaskMineOptions) -> Provenance:
    return Provenance(
        run_id=options.run_id,
        generator_params=generator_params_json(options),
        maskmine_version=maskmine_version(),
        created_at=dt.datetime.now(dt.timezone.utc),
    )
