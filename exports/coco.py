"""COCO instance-format export: one JSON with images, RLE annotations and a single category.

Loads in `pycocotools.coco.COCO`; `annToMask` gives back the mined masks exactly. Each
annotation also carries SAM's scores ("score" = predicted IoU, so the file doubles as a
COCO results list), the prompt point, the crop box and the masks-table `mask_id`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from .dataset import RunImage
from .files import write_json
from .sa1b import annotation

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}


def coco_dataset(images: list[RunImage], description: str = "maskmine masks") -> dict[str, Any]:
    """The COCO dict of `images`: annotation ids 1.., all in category 1, iscrowd 0."""
    coco_images, annotations = [], []
    for image in images:
        coco_images.append(
            {
                "id": image.image_id,
                "width": image.width,
                "height": image.height,
                "file_name": image.file_name,
                "coco_url": image.uri,
            }
        )
        for mask in image.masks:
            ann = annotation(mask, len(annotations) + 1)
            ann.update(
                image_id=image.image_id,
                category_id=CATEGORY["id"],
                iscrowd=0,
                score=ann["predicted_iou"],
            )
            annotations.append(ann)
    return {
        "info": {
            "description": description,
            "date_created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "run_ids": sorted({im.run_id for im in images}),
        },
        "licenses": [],
        "images": coco_images,
        "annotations": annotations,
        "categories": [CATEGORY],
    }


def export_coco(images: list[RunImage], dest: str, description: str = "maskmine masks") -> str:
    """Write the COCO JSON to the file `dest` (local or gs://); return its path."""
    write_json(dest, coco_dataset(images, description))
    return dest
