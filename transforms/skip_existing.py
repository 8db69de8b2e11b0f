"""Drop the URIs that earlier runs under the same output already mined (--skip_existing)."""

from __future__ import annotations

import apache_beam as beam

from .metrics import counter


class _SkipMined(beam.DoFn):
    """Drops the URIs already in earlier runs' images/ table (side input) and counts them."""

    def __init__(self) -> None:
        self.skipped = counter("images_skipped_existing")

    def process(self, uri: str, mined: dict):
        if uri in mined:
            self.skipped.inc()
            return
        yield uri


class SkipExisting(beam.PTransform):
    """PCollection[str] URIs -> those not in the images/ files matched by `images_glob`.

    The earlier URIs are read by the pipeline (a side input), not by the launcher: held in
    the job graph, millions of them would exceed Dataflow's request size.
    """

    def __init__(self, images_glob: str) -> None:
        super().__init__()
        self.images_glob = images_glob

    def expand(self, uris):
        mined = (
            uris.pipeline
            | "ReadMinedURIs" >> beam.io.ReadFromParquet(self.images_glob, columns=["image_uri"])
            | "KeyMinedURIs" >> beam.Map(lambda row: (row["image_uri"], None))
        )
        return uris | "Skip" >> beam.ParDo(_SkipMined(), beam.pvalue.AsDict(mined))
