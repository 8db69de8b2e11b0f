"""Mine each distinct image content once per streaming job."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.pvalue import PCollection
from apache_beam.transforms import window
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from .metrics import counter
from .records import DecodedImage


class _FirstPerKeyFn(beam.DoFn):
    """(key, value) -> value, the first time its key is seen (per window: use the global one)."""

    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())

    def __init__(self) -> None:
        self._duplicates = counter("duplicates_skipped")

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
