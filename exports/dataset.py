"""A finished run as a list of images, each with its masks and a stable integer id.

Shared by inspect and the exports. When an image was mined by several runs into the same
OUTPUT (a rerun without --skip_existing), only its newest run counts: its masks are not
mixed with the older run's.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .tables import check_run, read_table


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


def keep_newest(table: pa.Table, newest: dict[str, str]) -> pa.Table:
    """Rows of `table` (image_uri, run_id columns) from their image's newest run; rows of
    images that `newest` does not know are kept."""
    if not newest:
        return table
    keys = pc.binary_join_element_wise(table.column("image_uri"), table.column("run_id"), "\n")
    wanted = pa.array([f"{uri}\n{run_id}" for uri, run_id in newest.items()], pa.string())
    known = pc.is_in(table.column("image_uri"), value_set=pa.array(list(newest), pa.string()))
    return table.filter(pc.or_(pc.is_in(keys, value_set=wanted), pc.invert(known)))


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
            newest[row["image_uri"]] = {
                "image_uri": row["image_uri"],
                "image_sha256": row["image_sha256"],
                "image_width": row["image_width"],
                "image_height": row["image_height"],
                "run_id": row["run_id"],
                "masks_generated": -1,
            }
        masks.setdefault(row["image_uri"], []).append(row)
    images = []
    for i, uri in enumerate(sorted(newest), start=1):
        row = newest[uri]
        images.append(
            RunImage(
                image_id=i,
                uri=uri,
                sha256=row["image_sha256"],
                width=int(row["image_width"]),
                height=int(row["image_height"]),
                run_id=row["run_id"],
                masks_generated=int(row["masks_generated"]),
                # mask_id order: deterministic, independent of how Beam sharded the files.
                masks=sorted(masks.get(uri, []), key=lambda m: m["mask_id"]),
            )
        )
    return images
