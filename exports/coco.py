"""COCO instance-format export: one JSON with images, RLE annotations and a single category.

Loads in `pycocotools.coco.COCO`; `annToMask` gives back the mined masks exactly. Each
annotation also carries SAM's scores ("score" = predicted IoU, so the file doubles as a
COCO results list), the prompt point, the crop box and the masks-table `mask_id`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from .dataset import RunImage, RunIndex
from .files import write_json
from .sa1b import annotation

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def coco_dataset(images: list[RunImage], description: str = "maskmine masks") -> dict[str, Any]:
    """The COCO dict of `images`: annotation ids 1.., all in category 1, iscrowd 0."""
    annotations = []
    for image in images:
        annotations += image_annotations(image, len(annotations) + 1)
    return {
        **_head(images, description),
        "images": [coco_image(im) for im in images],
        "annotations": annotations,
        "categories": [CATEGORY],
    }


def coco_image(image: RunImage) -> dict[str, Any]:
    return {
        "id": image.image_id,
        "width": image.width,
        "height": image.height,
        "file_name": image.file_name,
        "coco_url": image.uri,
    }


def image_annotations(image: RunImage, first_id: int) -> list[dict[str, Any]]:
    """The COCO annotations of one image's masks, numbered from first_id."""
    out = []
    for k, mask in enumerate(image.masks):
        ann = annotation(mask, first_id + k)
        ann.update(
            image_id=image.image_id,
            category_id=CATEGORY["id"],
            iscrowd=0,
            score=ann["predicted_iou"],
        )
        out.append(ann)
    return out


def _head(images: list[RunImage], description: str) -> dict[str, Any]:
    return {
        "info": {
            "description": description,
            "date_created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "run_ids": sorted({im.run_id for im in images}),
        },
        "licenses": [],
    }


def export_coco(images: list[RunImage], dest: str, description: str = "maskmine masks") -> str:
    """Write the COCO JSON of `images` (a list, all in memory) to the file `dest`."""
    write_json(dest, coco_dataset(images, description))
    return dest


def export_coco_streaming(
    index: RunIndex,
    images: Iterable[RunImage],
    dest: str,
    description: str = "maskmine masks",
) -> str:
    """Write the same COCO JSON as `export_coco`, the annotations image by image as
    `images` (any order) yields them: memory holds one image's masks, and the index."""
    head = {**_head(index.images, description), "images": [coco_image(im) for im in index.images]}
    with FileSystems.create(dest, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(json.dumps(head, separators=(",", ":"))[:-1].encode() + b',"annotations":[')
        first = True
        for image in images:
            for ann in image_annotations(image, index.first_ann_ids[image.uri]):
                f.write((b"" if first else b",") + json.dumps(ann, separators=(",", ":")).encode())
                first = False
        f.write(b'],"categories":' + json.dumps([CATEGORY]).encode() + b"}")
    return dest
