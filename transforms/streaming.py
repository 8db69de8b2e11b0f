"""Streaming sources, per-content dedup and the output windowing of `--streaming` runs.

Sources give image URIs (str) with event timestamps:
- `ReadPubSubURIs`: a Pub/Sub subscription or topic whose messages are image URIs, or GCS
  object-finalize notifications (JSON with ``bucket`` and ``name``); timestamp = publish time.
- `WatchImageURIs`: folders or glob patterns (local or gs://) listed every few seconds by
  a splittable DoFn (not `fileio.MatchContinuously`, which no local runner of Beam 2.77
  runs: see the class); timestamp = poll time. A file that is overwritten is seen again
  (its mtime changed) and deduplicated by content downstream.

`DeduplicateByContent` then keeps the first image per sha256 of its bytes for the whole run
(see its docstring for the tradeoff), and `output_windowing` puts everything in fixed
windows so that each window gets its own set of output files.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.coders import BooleanCoder, PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PBegin, PCollection, TaggedOutput
from apache_beam.transforms import trigger, window
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Duration, Timestamp

from .read import (
    ERRORS,
    IMAGE_EXTENSIONS,
    URIS,
    ReadOutputs,
    _as_list,
    _has_glob,
    _is_remote,
    normalize_uri,
)
from .records import DecodedImage, Failure

NAMESPACE = "maskmine"
MESSAGE_STAGE = "message"
# GCS notification event types that mean "this object now has new content".
FINALIZE_EVENTS = frozenset({"OBJECT_FINALIZE"})
_EXCERPT_CHARS = 200


class MessageError(ValueError):
    """A Pub/Sub message that names no image; the message says why."""


def _excerpt(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    if not text:
        return "<empty message>"
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _is_image(name: str, extensions: Sequence[str]) -> bool:
    return name.lower().endswith(tuple(e.lower() for e in extensions))


def parse_message(
    data: bytes,
    attributes: Mapping[str, str] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> str | None:
    """The image URI a Pub/Sub message names, or None for a message to skip.

    - GCS notification (attribute ``eventType``, or a JSON object with ``bucket`` and
      ``name``): ``gs://bucket/name``. Events other than OBJECT_FINALIZE (deletes, metadata
      updates) and objects not ending in an image extension are skipped (None): a bucket's
      notifications cover every object under the prefix, as a watched folder does.
    - Plain text: one URI (``gs://...``, any ``scheme://`` path, or an absolute local path),
      kept whatever its extension, as a file named on the command line is.
    Raises MessageError for anything else (empty, not UTF-8, JSON without bucket/name, a
    relative path...).
    """
    attributes = attributes or {}
    event = attributes.get("eventType")
    if event is not None and event not in FINALIZE_EVENTS:
        return None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise MessageError(f"message is not UTF-8 text ({e})") from e
    if not text:
        # A notification with payload format NONE carries the object in its attributes.
        if "bucketId" in attributes and "objectId" in attributes:
            text = json.dumps({"bucket": attributes["bucketId"], "name": attributes["objectId"]})
        else:
            raise MessageError("empty message")
    if text.startswith("{"):
        try:
            payload = json.loads(text)
        except ValueError as e:
            raise MessageError(f"message is not valid JSON ({e})") from e
        bucket, name = payload.get("bucket"), payload.get("name")
        if not isinstance(bucket, str) or not isinstance(name, str) or not bucket or not name:
            raise MessageError("JSON message without string fields 'bucket' and 'name'")
        if name.endswith("/") or not _is_image(name, extensions):
            return None
        return f"gs://{bucket}/{name}"
    if "\n" in text:
        raise MessageError("message holds several lines; send one URI per message")
    if not (_is_remote(text) or text.startswith(("/", "file://"))):
        raise MessageError("not a URI (expected gs://bucket/object or an absolute path)")
    return normalize_uri(text)


class _ParseMessageFn(beam.DoFn):
    def __init__(self, extensions: Sequence[str]) -> None:
        self._extensions = tuple(extensions)
        self._skipped = Metrics.counter(NAMESPACE, "messages_skipped")
        self._bad = Metrics.counter(NAMESPACE, "messages_bad")

    def process(self, message: Any) -> Iterator[str | TaggedOutput]:
        # PubsubMessage (with_attributes=True) or the bare payload bytes.
        data = getattr(message, "data", message)
        attributes = getattr(message, "attributes", None)
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            uri = parse_message(data or b"", attributes, self._extensions)
        except MessageError as e:
            self._bad.inc()
            yield TaggedOutput(ERRORS, Failure(_excerpt(data or b""), MESSAGE_STAGE, str(e)))
            return
        if uri is None:
            self._skipped.inc()
            return
        yield uri


class ParsePubSubMessages(beam.PTransform):
    """PCollection[PubsubMessage | bytes] -> ReadOutputs(uris, errors).

    A message that names no image becomes a Failure (stage "message", uri = the message's
    first 200 characters), never a crashed pipeline; skipped notifications are counted
    (maskmine/messages_skipped).
    """

    def __init__(self, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        super().__init__()
        self._extensions = tuple(extensions)

    def expand(self, messages: PCollection) -> ReadOutputs:
        out = messages | "Parse" >> beam.ParDo(_ParseMessageFn(self._extensions)).with_outputs(
            ERRORS, main=URIS
        )
        return ReadOutputs(out[URIS], out[ERRORS])


class ReadPubSubURIs(beam.PTransform):
    """Pipeline root -> ReadOutputs from a Pub/Sub subscription or topic (exactly one).

    subscription: projects/P/subscriptions/S (messages are acknowledged once read); topic:
    projects/P/topics/T (the runner makes a temporary subscription: only messages
    published after the start are seen).
    """

    def __init__(
        self,
        subscription: str | None = None,
        topic: str | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        super().__init__()
        if (subscription is None) == (topic is None):
            raise ValueError("give exactly one of subscription and topic")
        self._subscription, self._topic = subscription, topic
        self._extensions = tuple(extensions)

    def expand(self, pbegin: PBegin) -> ReadOutputs:
        messages = pbegin | "ReadPubSub" >> beam.io.ReadFromPubSub(
            subscription=self._subscription, topic=self._topic, with_attributes=True
        )
        return messages | "ParseMessages" >> ParsePubSubMessages(self._extensions)


def watch_pattern(spec: str) -> str:
    """The FileSystems pattern that watching `spec` polls: a glob as written, a folder
    (no glob characters) recursively."""
    spec = normalize_uri(spec)
    return spec if _has_glob(spec) else spec.rstrip("/") + "/**"


@dataclasses.dataclass(frozen=True)
class WatchState:
    """Restriction of `_PollFolderFn`: what one watched pattern has shown so far.

    seen: (path, mtime) of every file emitted (a file whose mtime changes is emitted
    again). next_poll_at: wall-clock time (s) before which the next poll does not run.
    stopped: watching is over (stop time reached); nothing is left to do.
    """

    seen: frozenset = frozenset()
    next_poll_at: float = 0.0
    stopped: bool = False


class _WatchTracker(RestrictionTracker):
    """One poll round per `process()` call: the round is claimed with the state that
    follows it, and the checkpoint (`defer_remainder`) resumes from that state."""

    def __init__(self, restriction: WatchState) -> None:
        self._restriction = restriction
        self._after: WatchState | None = None
        self._done = False

    def current_restriction(self) -> WatchState:
        return self._restriction

    def try_claim(self, after: WatchState) -> bool:
        if self._done or self._restriction.stopped:
            return False
        self._after, self._done = after, True
        return True

    def try_split(self, fraction_of_remainder):
        if self._restriction.stopped:
            return None
        # Nothing claimed yet: all of the work is left.
        residual = self._restriction if self._after is None else self._after
        primary = dataclasses.replace(self._restriction, stopped=True)
        self._restriction, self._done = primary, True
        return primary, residual

    def check_done(self) -> None:
        if not (self._done or self._restriction.stopped):
            raise ValueError(f"watch round neither claimed nor checkpointed: {self._restriction}")

    def current_progress(self) -> RestrictionProgress:
        done = self._done or self._restriction.stopped
        return RestrictionProgress(completed=float(done), remaining=float(not done))

    def is_bounded(self) -> bool:
        return self._restriction.stopped


_MANUAL_WATERMARK = ManualWatermarkEstimator.default_provider()
# Set by `stop_watching`: in-process runners only (a local run's Ctrl-C).
_STOP_WATCHING = threading.Event()


def stop_watching() -> None:
    """Make every `WatchImageURIs` running in this process stop polling (as at its stop
    time): a local run then finishes the files found so far. No effect on remote workers.
    """
    _STOP_WATCHING.set()


def resume_watching() -> None:
    """Undo `stop_watching` (before starting another watching pipeline in this process)."""
    _STOP_WATCHING.clear()


class _PollFolderFn(beam.DoFn, RestrictionProvider):
    """Splittable DoFn: pattern -> new image paths (timestamped with their poll time),
    one listing every `interval_s` until wall-clock time `stop_at` (None: forever).

    Each round lists the pattern once with FileSystems.match, emits the image files not
    seen with their current mtime, sets the watermark to the poll time and defers the rest
    by `interval_s`. A runner that resumes deferred work at once instead of after the
    delay (Beam's in-process FnApiRunner does) is paced here: a round started before
    `next_poll_at` first sleeps until then, so the folder is listed at the same rate on
    every runner (on Dataflow the sleep is about zero).
    """

    def __init__(self, interval_s: float, stop_at: float | None, extensions: Sequence[str]):
        self._interval = interval_s
        self._stop_at = stop_at
        self._extensions = tuple(extensions)

    # RestrictionProvider: the DoFn is its own provider.
    def initial_restriction(self, element: str) -> WatchState:
        return WatchState()

    def create_tracker(self, restriction: WatchState) -> _WatchTracker:
        return _WatchTracker(restriction)

    def restriction_size(self, element: str, restriction: WatchState) -> int:
        return 1

    def restriction_coder(self):
        return PickleCoder()

    def _list(self, pattern: str) -> list[tuple[str, float]]:
        matches = FileSystems.match([pattern])[0].metadata_list
        return sorted(
            (m.path, float(m.last_updated_in_seconds or 0.0))
            for m in matches
            if m.path.lower().endswith(self._extensions)
        )

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        pattern: str,
        tracker=beam.DoFn.RestrictionParam(),  # noqa: B008 (Beam API)
        watermark=beam.DoFn.WatermarkEstimatorParam(_MANUAL_WATERMARK),  # noqa: B008
    ) -> Iterator[TimestampedValue]:
        state = tracker.current_restriction()
        if state.stopped:
            return
        wait = state.next_poll_at - time.time()
        if wait > 0:
            _STOP_WATCHING.wait(min(wait, self._interval))
        now = time.time()
        if _STOP_WATCHING.is_set() or (self._stop_at is not None and now >= self._stop_at):
            tracker.try_claim(dataclasses.replace(state, stopped=True))
            watermark.set_watermark(MAX_TIMESTAMP)
            return
        listed = self._list(pattern)
        new = [f for f in listed if f not in state.seen]
        after = WatchState(state.seen | frozenset(new), now + self._interval)
        if not tracker.try_claim(after):
            return
        stamp = Timestamp.of(now)
        for path, _ in new:
            yield TimestampedValue(normalize_uri(path), stamp)
        current = watermark.current_watermark()
        if current is None or current < stamp:
            watermark.set_watermark(stamp)
        tracker.defer_remainder(Duration.of(self._interval))


class WatchImageURIs(beam.PTransform):
    """Pipeline root -> PCollection[str]: new image files under `patterns`, as they appear.

    Each pattern (folder or glob, local or gs://) is listed every `poll_interval_s`
    seconds from now until `stop_after_s` seconds from now (None: until the job is
    cancelled or drained). A file is emitted when first seen and again when its
    modification time changes; only names ending in one of `extensions` are kept. Its
    timestamp is the time of the poll that found it, and the watermark follows the polls.

    Why not `fileio.MatchContinuously`: in Beam 2.77 it runs on Dataflow but on no local
    runner. The streaming BundleBasedDirectRunner rejects every splittable DoFn
    (runners/direct/direct_runner.py `_get_transform_overrides`: the GroupByKey that
    `ProcessKeyedElementsViaKeyedWorkItems` adds is expanded after the streaming
    GroupByKey overrides ran, "... was not replaced as expected", apache/beam#26577), and
    its SDF executor also calls `check_done` before a generator `process()` has run
    (runners/common.py) and drops `defer_remainder` delays; the FnApiRunner resumes
    deferred work at once, so MatchContinuously's poll budget (a count of polls, not a
    time) is spent in a fraction of a second. `_PollFolderFn` is a plain splittable DoFn
    with a wall-clock stop that paces itself: the same graph runs on Dataflow and, with
    `local_runner` choosing the FnApiRunner, on this machine.
    """

    def __init__(
        self,
        patterns: list[str],
        poll_interval_s: float,
        stop_after_s: float | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        super().__init__()
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be positive, got {poll_interval_s}")
        if stop_after_s is not None and stop_after_s <= 0:
            raise ValueError(f"stop_after_s must be positive, got {stop_after_s}")
        self._patterns = [watch_pattern(p) for p in _as_list(patterns, "patterns")]
        self._interval = float(poll_interval_s)
        self._stop_after_s = stop_after_s
        self._extensions = tuple(e.lower() for e in extensions)

    def expand(self, pbegin: PBegin) -> PCollection:
        # The stop time is fixed when the graph is built (job submission), not per worker.
        stop_at = time.time() + self._stop_after_s if self._stop_after_s else None
        return (
            pbegin
            | "Patterns" >> beam.Create(self._patterns)
            | "Poll"
            >> beam.ParDo(
                _PollFolderFn(self._interval, stop_at, self._extensions)
            ).with_output_types(str)
        )


class _FirstPerKeyFn(beam.DoFn):
    """(key, value) -> value, the first time its key is seen (per window: use the global one)."""

    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())

    def __init__(self) -> None:
        self._duplicates = Metrics.counter(NAMESPACE, "duplicates_skipped")

    def process(self, element, seen=beam.DoFn.StateParam(SEEN)):  # noqa: B008 (Beam API)
        _, value = element
        if seen.read():
            self._duplicates.inc()
            return
        seen.write(True)
        yield value


class DeduplicateByContent(beam.PTransform):
    """PCollection[DecodedImage] (global window) -> the first image per sha256, for the run.

    Why this way: a re-notification of the same object, the same file re-uploaded (or
    uploaded under another name) and a re-matched file all have the same bytes, so keying on
    the content hash catches every case, while an object overwritten with new content is
    mined again. A stateful DoFn keyed by sha256 keeps one boolean per distinct image in the
    global window, so duplicates are caught however far apart they arrive; `beam.Distinct`
    per output window would be cheaper but lets a re-upload in a later window through.
    Cost: the state grows by about 100 bytes per distinct image for the life of the job
    (about 100 MB per million images, spread over workers by key), and decoded pixels cross
    one shuffle. Error rows are not deduplicated (each failed delivery is reported).
    """

    def expand(self, images: PCollection) -> PCollection:
        if not isinstance(images.windowing.windowfn, window.GlobalWindows):
            raise ValueError("DeduplicateByContent needs the global window (run-wide state)")
        return (
            images
            | "KeyBySha256"
            >> beam.Map(lambda im: (im.sha256, im)).with_output_types(tuple[str, DecodedImage])
            | "FirstPerSha256" >> beam.ParDo(_FirstPerKeyFn()).with_output_types(DecodedImage)
        )


def output_windowing(window_s: int, allowed_lateness_s: int) -> beam.WindowInto:
    """Fixed windows of `window_s` seconds, fired when the watermark passes their end and
    again for each late element up to `allowed_lateness_s` (each late firing writes its own
    files); later elements are dropped by the runner."""
    if window_s <= 0 or allowed_lateness_s < 0:
        raise ValueError(
            f"need window_s > 0 and allowed_lateness_s >= 0, got {window_s}, {allowed_lateness_s}"
        )
    return beam.WindowInto(
        window.FixedWindows(window_s),
        trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
        allowed_lateness=allowed_lateness_s,
        accumulation_mode=trigger.AccumulationMode.DISCARDING,
    )
