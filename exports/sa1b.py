"""SA-1B style export: one JSON file per image, with SA-1B's field names.

{"image": {"image_id", "width", "height", "file_name", "image_uri"},
 "annotations": [{"id", "segmentation": {"size": [h, w], "counts"}, "bbox" XYWH px, "area" px,
                  "predicted_iou", "stability_score", "crop_box" XYWH px,
                  "point_coords" [[x, y]], "mask_id"}]}

`image_uri` and `mask_id` are maskmine's additions (the source and the masks-table row).
Annotation ids are unique across the whole export.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Iterable
from typing import Any

from apache_beam.io.filesystems import FileSystems

from .dataset import RunImage
from .files import write_json


def annotation(mask: dict[str, Any], ann_id: int) -> dict[str, Any]:
    """An SA-1B annotation from a masks-table row."""
    return {
        "id": ann_id,
        "segmentation": {
            "size": list(mask["segmentation"]["size"]),
            "counts": mask["segmentation"]["counts"],
        },
        "bbox": list(mask["bbox"]),
        "area": int(mask["area"]),
        "predicted_iou": float(mask["predicted_iou"]),
        "stability_score": float(mask["stability_score"]),
        "crop_box": list(mask["crop_box"]),
        "point_coords": [list(p) for p in mask["point_coords"]],
        "mask_id": mask["mask_id"],
    }


def image_record(image: RunImage, first_ann_id: int) -> dict[str, Any]:
    """The SA-1B JSON object of one image; its annotations are numbered from first_ann_id."""
    return {
        "image": {
            "image_id": image.image_id,
            "width": image.width,
            "height": image.height,
            "file_name": image.file_name,
            "image_uri": image.uri,
        },
        "annotations": [annotation(m, first_ann_id + k) for k, m in enumerate(image.masks)],
    }


def json_names(images: list[RunImage]) -> list[str]:
    """File name of each image's JSON: its own stem (as SA-1B: sa_1.jpg -> sa_1.json), with
    the image id appended where two images share a stem (same name in different folders)."""
    stems = [posixpath.splitext(im.file_name)[0] or "image" for im in images]
    shared = Counter(stems)
    return [
        f"{stem}.json" if shared[stem] == 1 else f"{stem}_{im.image_id}.json"
        for stem, im in zip(stems, images)
    ]


def export_sa1b(
    images: Iterable[RunImage],
    dest: str,
    names: dict[str, str] | None = None,
    first_ann_ids: dict[str, int] | None = None,
) -> list[str]:
    """Write one JSON per image into the folder `dest` (local or gs://); return the paths.

    Streaming: with `names` and `first_ann_ids` (image_uri -> file name, first annotation
    id, from the run's index) `images` may be any iterable in any order; without them it
    is a list in image_id order and both are computed from it."""
    if names is None or first_ann_ids is None:
        images = list(images)
        names = dict(zip((im.uri for im in images), json_names(images)))
        first_ann_ids, next_id = {}, 1
        for image in images:
            first_ann_ids[image.uri] = next_id
            next_id += len(image.masks)
    paths = []
    for image in images:
        path = FileSystems.join(dest, names[image.uri])
        write_json(path, image_record(image, first_ann_ids[image.uri]))
        paths.append(path)
    return paths
