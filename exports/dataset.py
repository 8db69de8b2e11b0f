"""A finished run as images, each with its masks and a stable integer id.

`load_run` gives them all at once (inspect); `index_run` + `iter_images` stream them, one
image's masks in memory at a time (the exports). Both number images and annotations the
same way. When an image was mined by several runs into the same OUTPUT (a rerun without
--skip_existing), only its newest run counts: its masks are not mixed with the older run's.
"""

from __future__ import annotations

import dataclasses
import posixpath
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.compute as pc

from .tables import check_run, iter_table, read_table


@dataclasses.dataclass
class RunImage:
    """One mined image and its masks (rows of the masks table, as dicts).

    image_id: 1-based position in URI order among the images loaded; exports load them all,
    so an export of the same run folder always gives an image the same id.
    """

    image_id: int
    uri: str
    sha256: str
    width: int
    height: int
    run_id: str
    masks_generated: int  # -1 when the image is missing from the images table
    masks: list[dict[str, Any]]

    @property
    def file_name(self) -> str:
        """Base name of the URI (local or gs://)."""
        return posixpath.basename(self.uri.rstrip("/"))


def newest_runs(images: pa.Table) -> dict[str, str]:
    """image_uri -> run_id of its newest row in an images table (image_uri, run_id,
    created_at columns)."""
    newest: dict[str, tuple[Any, str]] = {}
    columns = (images.column(c).to_pylist() for c in ("image_uri", "run_id", "created_at"))
    for uri, run_id, created in zip(*columns):
        if uri not in newest or created > newest[uri][0]:
            newest[uri] = (created, run_id)
    return {uri: run_id for uri, (_, run_id) in newest.items()}


def newest_filter(newest: dict[str, str]) -> Callable[[pa.Table], pa.Table]:
    """`keep_newest` for many tables against one `newest`: its value sets built once."""
    wanted = pa.array([f"{uri}\n{run_id}" for uri, run_id in newest.items()], pa.string())
    known = pa.array(list(newest), pa.string())

    def keep(table: pa.Table) -> pa.Table:
        if not newest:
            return table
        uris = table.column("image_uri")
        keys = pc.binary_join_element_wise(uris, table.column("run_id"), "\n")
        return table.filter(
            pc.or_(pc.is_in(keys, value_set=wanted), pc.invert(pc.is_in(uris, value_set=known)))
        )

    return keep


def keep_newest(table: pa.Table, newest: dict[str, str]) -> pa.Table:
    """Rows of `table` (image_uri, run_id columns) from their image's newest run; rows of
    images that `newest` does not know are kept."""
    return newest_filter(newest)(table)


def load_run(output: str, image_uris: Iterable[str] | None = None) -> list[RunImage]:
    """Images of the run folder `output` (all, or only `image_uris`) sorted by URI.

    Raises tables.RunError if `output` holds no maskmine tables.
    """
    check_run(output)
    uris = None if image_uris is None else set(image_uris)
    image_table = read_table(output, "images", image_uris=uris)
    newest_run = newest_runs(image_table)
    newest = {r["image_uri"]: r for r in keep_newest(image_table, newest_run).to_pylist()}
    masks: dict[str, list[dict[str, Any]]] = {}
    mask_table = keep_newest(read_table(output, "masks", image_uris=uris), newest_run)
    for row in mask_table.to_pylist():
        if row["image_uri"] not in newest:  # masks without an images row (not maskmine's)
            newest[row["image_uri"]] = {k: row[k] for k in _STAND_IN} | {"masks_generated": -1}
        masks.setdefault(row["image_uri"], []).append(row)
    images = []
    for i, uri in enumerate(sorted(newest), start=1):
        row = newest[uri]
        # mask_id order: deterministic, independent of how Beam sharded the files.
        images.append(_run_image(i, row, sorted(masks.get(uri, []), key=lambda m: m["mask_id"])))
    return images


def _run_image(image_id: int, row: dict, masks: list[dict]) -> RunImage:
    """A RunImage from an images-table row (or a stand-in of one) and its masks."""
    return RunImage(
        image_id=image_id,
        uri=row["image_uri"],
        sha256=row["image_sha256"],
        width=int(row["image_width"]),
        height=int(row["image_height"]),
        run_id=row["run_id"],
        masks_generated=int(row["masks_generated"]),
        masks=masks,
    )


@dataclasses.dataclass
class RunIndex:
    """What a streaming export needs to know before the first mask: every image (URI
    order, `masks` empty) with its mask count and the id of its first annotation, as
    `load_run` + the exports number them. O(images) small objects, no masks."""

    images: list[RunImage]
    mask_counts: dict[str, int]  # image_uri -> masks of its newest run
    first_ann_ids: dict[str, int]  # image_uri -> id of its first annotation (1-based)
    newest_run: dict[str, str]  # image_uri -> run_id, for images with an images-table row

    @property
    def masks(self) -> int:
        return sum(self.mask_counts.values())


# What an index entry needs, from the images table or, for masks without an images row,
# from the masks table.
_STAND_IN = ["image_uri", "image_sha256", "image_width", "image_height", "run_id"]


def index_run(output: str) -> RunIndex:
    """The index of the run folder `output`: the images table, and one pass over the
    masks table's image_uri/run_id columns (batches, never the whole table).

    Raises tables.RunError if `output` holds no maskmine tables.
    """
    check_run(output)
    wanted = [*_STAND_IN, "masks_generated", "created_at"]
    image_table = read_table(output, "images", columns=wanted)
    newest_run = newest_runs(image_table)
    newest = {r["image_uri"]: r for r in keep_newest(image_table, newest_run).to_pylist()}
    del image_table
    # One copy of each URI string, shared by every map of the index (~100 bytes each).
    newest_run = {uri: newest[uri]["run_id"] for uri in newest_run}
    keep, known = newest_filter(newest_run), pa.array(list(newest), pa.string())
    counts: dict[str, int] = {}
    for batch in iter_table(output, "masks", columns=_STAND_IN, batch_rows=8192):
        batch = keep(batch)
        uris = batch.column("image_uri")
        for row in pc.value_counts(uris).to_pylist():
            counts[row["values"]] = counts.get(row["values"], 0) + row["counts"]
        unknown = pc.invert(pc.is_in(uris, value_set=known))
        for row in batch.filter(unknown).to_pylist():  # masks without an images row
            newest.setdefault(row["image_uri"], dict(row, masks_generated=-1))
    images, first_ann_ids, next_id = [], {}, 1
    for i, uri in enumerate(sorted(newest), start=1):
        row = newest.pop(uri)  # the row dicts go as the entries come
        images.append(_run_image(i, row, []))
        first_ann_ids[uri] = next_id
        next_id += counts.get(uri, 0)
    mask_counts = {im.uri: counts.get(im.uri, 0) for im in images}
    return RunIndex(images, mask_counts, first_ann_ids, newest_run)


def iter_images(
    output: str, index: RunIndex, progress: Progress | None = None
) -> Iterator[RunImage]:
    """Each image of `index` once, with its masks (mask_id order), in the order the masks
    files hold them, then the images without masks.

    An image is yielded as soon as its last mask has been read: memory holds the images
    whose masks are still arriving, which for the pipeline's files (an image's rows are
    written together) is about one image's masks, whatever the size of the run.
    """
    by_uri = {im.uri: im for im in index.images}
    keep = newest_filter(index.newest_run)  # the rows index_run counted
    pending: dict[str, list[dict[str, Any]]] = {}
    done: set[str] = set()
    for batch in iter_table(output, "masks", batch_rows=256):
        for row in keep(batch).to_pylist():
            uri = row["image_uri"]
            rows = pending.setdefault(uri, [])
            rows.append(row)
            if len(rows) == index.mask_counts[uri]:
                del pending[uri]
                done.add(uri)
                if progress:
                    progress.step()
                yield dataclasses.replace(
                    by_uri[uri], masks=sorted(rows, key=lambda m: m["mask_id"])
                )
    for image in index.images:  # without masks (or, never for our files, short of them)
        if image.uri not in done:
            if progress:
                progress.step()
            rows = pending.pop(image.uri, [])
            yield dataclasses.replace(image, masks=sorted(rows, key=lambda m: m["mask_id"]))


class Progress:
    """`label: n/total images` on `stream` at most every `every_s` seconds, and at the end
    (`done`); silent for runs that finish before the first report is due."""

    def __init__(
        self, label: str, total: int, every_s: float = 5.0, stream: TextIO | None = None
    ) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.stream = stream or sys.stderr
        self.count, self.start = 0, time.monotonic()
        self.last = self.start
        self.reported = False

    def step(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last, self.reported = now, True
            rate = self.count / max(now - self.start, 1e-9)
            print(
                f"{self.label}: {self.count}/{self.total} images ({rate:.1f}/s)",
                file=self.stream,
                flush=True,
            )

    def done(self) -> None:
        if self.reported:
            print(f"{self.label}: {self.count}/{self.total} images, done", file=self.stream)
