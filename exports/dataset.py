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


def load_run(output: str, image_uris: Iterable[str] | None = None) -> list[RunImage]:
    """Images of the run folder `output` (all, or only `image_uris`) sorted by URI.

    Raises tables.RunError if `output` holds no maskmine tables.
    """
    check_run(output)
    uris = None if image_uris is None else set(image_uris)
    newest: dict[str, dict[str, Any]] = {}
    for row in read_table(output, "images", image_uris=uris).to_pylist():
        old = newest.get(row["image_uri"])
        if old is None or row["created_at"] > old["created_at"]:
            newest[row["image_uri"]] = row
    masks: dict[str, list[dict[str, Any]]] = {}
    for row in read_table(output, "masks", image_uris=uris).to_pylist():
        image = newest.get(row["image_uri"])
        if image is not None and row["run_id"] != image["run_id"]:
            continue  # an older run's mask of a re-mined image
        if image is None:  # masks without an images row (not written by maskmine itself)
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
