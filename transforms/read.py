"""Image URIs from glob patterns, folders and manifests, as a Beam transform.

`ImageURIs` returns `ReadOutputs(uris, errors)`: deduplicated URIs (str) and `Failure`s
(stage "read") for inputs that yield nothing, so a typo never passes silently. The rules
(what a pattern, folder or manifest names) are those of `transforms.uris`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import apache_beam as beam
from apache_beam.pvalue import PBegin, PCollection, TaggedOutput

from .metrics import counter
from .records import ERRORS, Failure, outputs_getitem
from .uris import (
    IMAGE_EXTENSIONS,
    MANIFEST_PREFIX,
    ManifestError,
    as_list,
    is_manifest,
    match_pattern,
    normalize_uri,
    read_error_reason,
    read_manifest,
)

URIS = "uris"
PROBLEMS = "problems"
_LOG = logging.getLogger(__name__)


class ReadOutputs(NamedTuple):
    """uris: PCollection[str], deduplicated; errors: PCollection[Failure]."""

    uris: PCollection
    errors: PCollection

    __getitem__ = outputs_getitem


# The main output's type is declared here, not read off process's annotation: Beam 2.78
# reads a bare TaggedOutput in `Iterator[T | TaggedOutput]` into the main output's type,
# and its parametrised TaggedOutput[...] does not exist in 2.77.
@beam.typehints.with_output_types(str)
class _MatchFn(beam.DoFn):
    def __init__(self, extensions: Sequence[str]):
        self._extensions = tuple(e.lower() for e in extensions)
        self._skipped = counter("files_skipped_by_extension")

    def process(self, pattern: str) -> Iterator:
        skipped: list[str] = []
        problems: list[tuple[str, str]] = []
        try:
            paths, reason = match_pattern(pattern, self._extensions, skipped, problems)
        except Exception as e:  # a listing error (permissions, no bucket) fails this pattern only
            paths, reason = [], f"cannot list {pattern}: {read_error_reason(e)}"
        if reason is not None:
            yield TaggedOutput(ERRORS, Failure(uri=pattern, stage="read", error=reason))
        for problem in problems:  # listed, but not minable (see match_pattern)
            yield TaggedOutput(PROBLEMS, problem)
        if skipped:
            # Not an error (the user's --extensions chose it), but never silent.
            self._skipped.inc(len(skipped))
            _LOG.warning(
                "%s: %d file(s) skipped by --extensions, e.g. %s",
                pattern,
                len(skipped),
                ", ".join(skipped[:3]),
            )
        yield from (normalize_uri(p) for p in paths)


# Main output type declared, as for _MatchFn.
@beam.typehints.with_output_types(str)
class _ManifestFn(beam.DoFn):
    def __init__(self, column: str | None):
        self._column = column

    def process(self, path: str) -> Iterator:
        try:
            yield from read_manifest(path, self._column)
        except ManifestError as e:
            yield TaggedOutput(ERRORS, Failure(uri=path, stage="read", error=str(e)))


def _listing_failure(uri: str, error: str) -> Failure:
    return Failure(uri=uri, stage="read", error=error)


def _dedup(uris: PCollection, errors: PCollection) -> ReadOutputs:
    # Distinct groups by URI, which also spreads the URIs of one big listing over workers.
    return ReadOutputs(uris | "Distinct" >> beam.Distinct().with_output_types(str), errors)


class ImageURIs(beam.PTransform):
    """Pipeline root -> image URIs from a mix of patterns and manifests, each mined once.

    An input is a manifest if it is written ``manifest:PATH`` or ends in .txt/.csv/.parquet
    (its URIs are read with `column`, see read_manifest); anything else is a pattern (see
    transforms.uris.match_pattern). A URI found through several inputs is emitted once.
    """

    def __init__(
        self,
        inputs: list[str],
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        column: str | None = None,
        listing_errors: Sequence[Failure] = (),
    ):
        """listing_errors: Failures of a listing done before the pipeline (--commit_every
        lists on the launcher), written to the errors table with this pipeline's."""
        super().__init__()
        self._listing_errors = list(listing_errors)
        inputs = as_list(inputs, "inputs")
        self._manifests = [
            normalize_uri(s.removeprefix(MANIFEST_PREFIX)) for s in inputs if is_manifest(s)
        ]
        self._patterns = [normalize_uri(s) for s in inputs if not is_manifest(s)]
        self._extensions = tuple(extensions)
        self._column = column

    def expand(self, pbegin: PBegin) -> ReadOutputs:
        uris, errors = [], []
        if self._patterns:
            out = (
                pbegin
                | "Patterns" >> beam.Create(self._patterns)
                | "Match"
                >> beam.ParDo(_MatchFn(self._extensions)).with_outputs(ERRORS, PROBLEMS, main=URIS)
            )
            uris.append(out[URIS])
            errors.append(out[ERRORS])
            # One row per entry, however many patterns list it (as URIs are mined once).
            errors.append(
                out[PROBLEMS]
                | "DistinctProblems" >> beam.Distinct().with_output_types(tuple[str, str])
                | "ProblemRows" >> beam.MapTuple(_listing_failure)
            )
        if self._manifests:
            out = (
                pbegin
                | "Manifests" >> beam.Create(self._manifests)
                | "ReadManifests"
                >> beam.ParDo(_ManifestFn(self._column)).with_outputs(ERRORS, main=URIS)
            )
            uris.append(out[URIS])
            errors.append(out[ERRORS])
        if self._listing_errors:
            errors.append(pbegin | "ListingErrors" >> beam.Create(self._listing_errors))
        return _dedup(
            uris | "FlattenURIs" >> beam.Flatten(),
            errors | "FlattenErrors" >> beam.Flatten(),
        )
