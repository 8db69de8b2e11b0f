"""Pub/Sub as a source of image URIs (streaming runs).

Messages are image URIs, or GCS object-finalize notifications (JSON with ``bucket`` and
``name``); their timestamp is the publish time. A message that names no image becomes a
`Failure` of stage "message".
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import PBegin, PCollection, TaggedOutput

from .metrics import counter
from .read import URIS, ReadOutputs
from .records import ERRORS, Failure
from .uris import IMAGE_EXTENSIONS, is_image_name, is_remote, normalize_uri

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
        if name.endswith("/") or not is_image_name(name, extensions):
            return None
        return f"gs://{bucket}/{name}"
    if "\n" in text:
        raise MessageError("message holds several lines; send one URI per message")
    if not (is_remote(text) or text.startswith(("/", "file://"))):
        raise MessageError("not a URI (expected gs://bucket/object or an absolute path)")
    return normalize_uri(text)


# The main output's type is declared here, not read off process's annotation: Beam 2.78
# reads a bare TaggedOutput in `Iterator[T | TaggedOutput]` into the main output's type,
# and its parametrised TaggedOutput[...] does not exist in 2.77.
@beam.typehints.with_output_types(str)
class _ParseMessageFn(beam.DoFn):
    def __init__(self, extensions: Sequence[str]) -> None:
        self._extensions = tuple(extensions)
        self._skipped = counter("messages_skipped")
        self._bad = counter("messages_bad")

    def process(self, message: Any) -> Iterator:
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
