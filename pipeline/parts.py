"""Local batch runs in parts (`--commit_every N`).

A batch pipeline writes its files when it finishes, so a local run killed after ten hours
leaves nothing. In parts, the launcher lists the inputs once (the same rules as the
pipeline's ImageURIs), then runs the pipeline once per N images, each run committing its
own files: a run stopped midway keeps every part it finished, and `--skip_existing`
mines only the rest. Part k's rows and files carry the run id RUN_ID-partNNNNN.
"""

from __future__ import annotations

import collections
import os
import posixpath
import re
import tempfile
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas import layout
from transforms.records import Failure
from transforms.uris import list_image_uris

from .claims import is_dead, read_claim
from .config import ConfigError, mined_images_pattern, options_extensions
from .options import LocalRunOptions, MaskMineOptions
from .run import mine_once, say


def mined_uris(output: str) -> set[str]:
    """The image_uri column of the images/ tables of earlier runs under `output`."""
    # mined_images_pattern raises ConfigError when the listing fails: a resume that
    # read that as "nothing mined" would mine everything again.
    pattern = mined_images_pattern(output)
    if pattern is None:
        return set()
    uris: set[str] = set()
    for found in FileSystems.match([pattern])[0].metadata_list:
        with FileSystems.open(found.path) as f:
            uris.update(pq.read_table(f, columns=["image_uri"]).column(0).to_pylist())
    return uris


class Plan(NamedTuple):
    """parts: URIs of each part; failed: inputs that listed no image; skipped: URIs
    already mined; listing_errors: listed entries that cannot be mined, as Failures;
    by_extension: files skipped by --extensions."""

    parts: list[list[str]]
    failed: list[str]
    skipped: int
    listing_errors: list[Failure]
    by_extension: int


# A batch run's part file (WriteToParquet's shard template), and the id of a part's run.
_BATCH_FILE = re.compile(r"^part-(?P<run>.+)-(?P<shard>\d{5})-of-(?P<total>\d{5})\.parquet$")
_PART_ID = re.compile(r"^(?P<run>.+)-part\d{5}$")


def unfinished_runs(output: str) -> dict[str, list[str]]:
    """Batch runs under `output` that were killed before their images/ files were all in
    place, with their part files (images/ first): run id -> paths.

    A batch run commits masks/ and embeddings/ before images/ (pipeline/graph.py), so a
    kill in between leaves masks no images/ row points to; `--skip_existing` would mine
    those images again and the raw masks table would hold their masks twice. A run counts
    as killed only when its claim (OUTPUT/_runs/) says it ran in a process of this host
    that is gone: a run still going, on another host or on Dataflow, is never touched.
    """
    files: dict[str, dict[str, list[tuple[str, int]]]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    for table in layout.TABLES:
        pattern = layout.table_glob(output, table)
        try:
            found = FileSystems.match([pattern])[0].metadata_list
        except Exception as e:
            raise ConfigError(f"--skip_existing: cannot list {pattern}: {e}") from e
        for meta in found:
            m = _BATCH_FILE.match(posixpath.basename(meta.path))
            if m:
                files[m["run"]][table].append((meta.path, int(m["total"])))
    unfinished = {}
    for run_id, tables in files.items():
        images = tables.get(layout.IMAGES, [])
        if images and len(images) == images[0][1]:
            continue  # every images/ shard is in place: the run finished
        part = _PART_ID.match(run_id)
        claim = read_claim(output, run_id) or (part and read_claim(output, part["run"]))
        if claim and is_dead(claim):
            order = [layout.IMAGES, *(t for t in layout.TABLES if t != layout.IMAGES)]
            unfinished[run_id] = [p for t in order for p, _ in tables.get(t, [])]
    return unfinished


def remove_unfinished_runs(output: str) -> int:
    """Delete the part files of `unfinished_runs`, images/ first (a kill midway leaves
    masks without images, which the next run removes, never images without masks);
    the number of files removed. ConfigError if a file cannot be deleted."""
    removed = 0
    for run_id, paths in sorted(unfinished_runs(output).items()):
        say(
            f"run {run_id} was killed before all its images/ files were written: removing "
            f"its {len(paths)} part file(s), its images are mined again"
        )
        for path in paths:
            try:
                # A local delete matches its argument as a pattern: out[1] would miss.
                FileSystems.delete([path if path.startswith("gs://") else layout.glob_escape(path)])
            except Exception as e:
                raise ConfigError(f"--skip_existing: cannot remove {path}: {e}") from e
            removed += 1
    return removed


def plan_parts(options: MaskMineOptions) -> Plan:
    """What each part mines (see Plan)."""
    by_extension: list[str] = []
    problems: list[tuple[str, str]] = []
    uris, failed = list_image_uris(
        options.input, options_extensions(options), skipped=by_extension, problems=problems
    )
    # One row per entry, however many inputs listed it.
    listing_errors = [
        Failure(uri=uri, stage="read", error=error) for uri, error in dict(problems).items()
    ]
    if by_extension:
        say(
            f"{len(by_extension)} file(s) skipped by --extensions, e.g. "
            f"{', '.join(by_extension[:3])}"
        )
    skipped = 0
    if options.skip_existing:
        mined = mined_uris(options.output)
        kept = [u for u in uris if u not in mined]
        skipped, uris = len(uris) - len(kept), kept
    every = options.view_as(LocalRunOptions).commit_every
    parts = [uris[i : i + every] for i in range(0, len(uris), every)]
    return Plan(parts, failed, skipped, listing_errors, len(by_extension))


def mine_in_parts(options: MaskMineOptions) -> tuple[int, dict[str, int]]:
    """Run the pipeline once for each part; (exit status, counters summed over the parts)."""
    parts, failed, skipped, listing_errors, by_extension = plan_parts(options)
    totals: collections.Counter[str] = collections.Counter()
    if by_extension:  # the parts list nothing themselves: the launcher's count
        totals["files_skipped_by_extension"] = by_extension
    if skipped:
        totals["images_skipped_existing"] = skipped
        say(f"{skipped} image(s) already in {options.output}/images/: skipped")
    if not parts and not failed and not listing_errors:
        say("nothing left to mine")
        return 0, dict(totals)
    # Inputs that listed nothing go to the first part, whose pipeline writes their errors.
    # If their listing works this time, --skip_existing still applies to what they list.
    parts = parts or [[]]
    run_id, skip_existing = options.run_id, options.skip_existing
    with tempfile.TemporaryDirectory(prefix="maskmine-parts-") as tmp:
        for k, uris in enumerate(parts):
            inputs = list(failed) if k == 0 else []
            if uris:
                # Parquet, not lines of text: a URI may hold any character, line breaks too.
                manifest = os.path.join(tmp, f"part-{k:05d}.parquet")
                pq.write_table(pa.table({"uri": pa.array(uris, pa.string())}), manifest)
                inputs.append(f"manifest:{manifest}")
            options.input, options.run_id = inputs, f"{run_id}-part{k:05d}"
            # The listed URIs were filtered above; inputs listed again here were not.
            options.skip_existing = skip_existing and k == 0 and bool(failed)
            say(f"part {k + 1}/{len(parts)}: {len(uris)} image(s), run {options.run_id}")
            try:
                # Part 0 writes the listing's error rows too.
                status, counts = mine_once(options, listing_errors if k == 0 else ())
            except BaseException:
                _stopped(k, options.output)
                raise
            if status:
                if status != 2:  # a config error: running it again would not help
                    _stopped(k, options.output)
                return status, dict(totals)
            totals.update(counts or {})
    return 0, dict(totals)


def _stopped(k: int, output: str) -> None:
    done = f"{'part 1 is' if k == 1 else f'parts 1-{k} are'} written to {output}; " if k else ""
    say(
        f"stopped in part {k + 1}: {done}run again with --skip_existing (and a new --run_id, "
        f"if you set one) to mine the rest"
    )
