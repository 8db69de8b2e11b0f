"""Streaming sources, per-content dedup and the output windowing of `--streaming` runs.

Sources give image URIs (str) with event timestamps:
- `ReadPubSubURIs`: a Pub/Sub subscription or topic whose messages are image URIs, or GCS
  object-finalize notifications (JSON with ``bucket`` and ``name``); timestamp = publish time.
- `WatchImageURIs`: folders or glob patterns (local or gs://) polled with
  `fileio.MatchContinuously`; timestamp = poll time. A file that is overwritten is matched
  again (its mtime changed) and deduplicated by content downstream.

`DeduplicateByContent` then keeps the first image per sha256 of its bytes for the whole run
(see its docstring for the tradeoff), and `output_windowing` puts everything in fixed
windows so that each window gets its own set of output files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.io import fileio
from apache_beam.metrics import Metrics
from apache_beam.pvalue import PBegin, PCollection, TaggedOutput
from apache_beam.transforms import trigger, window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

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


class WatchImageURIs(beam.PTransform):
    """Pipeline root -> PCollection[str]: new image files under `patterns`, as they appear.

    Each pattern (folder or glob, local or gs://) is polled every `poll_interval_s` seconds
    with `fileio.MatchContinuously`, from now until `stop_after_s` seconds from now (None:
    forever). A file is emitted when first seen and again when its modification time
    changes; only names ending in one of `extensions` are kept.
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
        # MatchContinuously's default start is its module's import time: pass "now".
        start = Timestamp.now()
        stop = start + self._stop_after_s if self._stop_after_s else MAX_TIMESTAMP
        found = []
        for i, pattern in enumerate(self._patterns):
            found.append(
                pbegin
                | f"Watch{i}"
                >> fileio.MatchContinuously(
                    pattern,
                    interval=self._interval,
                    start_timestamp=start,
                    stop_timestamp=stop,
                    match_updated_files=True,
                )
            )
        extensions = self._extensions
        return (
            found
            | "FlattenWatched" >> beam.Flatten()
            | "Images" >> beam.Filter(lambda m: m.path.lower().endswith(extensions))
            | "Paths" >> beam.Map(lambda m: normalize_uri(m.path)).with_output_types(str)
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
