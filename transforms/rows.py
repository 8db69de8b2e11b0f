"""Rows of the output tables, built from the pipeline's records.

Each function turns one record into dicts of the table's schema (schemas/tables.py);
the sinks validate them against it before writing.
"""

from __future__ import annotations

import json

import numpy as np

from schemas import tables

from .hierarchy import parents
from .records import Failure, MinedImage, Provenance


def run_params(generator_params: str, runtime: dict[str, str]) -> str:
    """The generator_params JSON of a row: the run's parameters, with "precision" the one
    the model actually ran in ("precision_requested" the flag, e.g. "auto"), plus the
    device and torch version."""
    params = json.loads(generator_params)
    if runtime:
        params["precision_requested"] = params.get("precision")
        params.update(runtime)
    return json.dumps(params, sort_keys=True)


def mask_rows(image: MinedImage, provenance: Provenance) -> list[dict]:
    """One masks-table row per mask of `image`, with its place in the image's containment
    hierarchy (transforms/hierarchy.py: parent_mask_id, depth)."""
    params = run_params(provenance.generator_params, image.runtime)
    ids = [
        tables.mask_id(
            image.sha256, m["segmentation"]["counts"], m["crop_box"], m["point_coords"], image.uri
        )
        for m in image.masks
    ]
    parent_ids, depths = parents([m["segmentation"] for m in image.masks], ids)
    rows = []
    for m, id_, parent_id, depth in zip(image.masks, ids, parent_ids, depths):
        rle = m["segmentation"]
        rows.append(
            {
                "mask_id": id_,
                "image_uri": image.uri,
                "image_sha256": image.sha256,
                "image_width": image.width,
                "image_height": image.height,
                "segmentation": {"size": list(rle["size"]), "counts": rle["counts"]},
                "bbox": [float(v) for v in m["bbox"]],
                "area": int(m["area"]),
                "predicted_iou": float(m["predicted_iou"]),
                "stability_score": float(m["stability_score"]),
                "point_coords": [[float(x), float(y)] for x, y in m["point_coords"]],
                "crop_box": [int(v) for v in m["crop_box"]],
                "parent_mask_id": parent_id,
                "depth": depth,
                "model_type": image.model_type,
                "checkpoint_sha256": image.checkpoint_sha256,
                "generator_params": params,
                "maskmine_version": provenance.maskmine_version,
                "run_id": provenance.run_id,
                "created_at": provenance.created_at,
            }
        )
    return rows


def image_row(image: MinedImage, provenance: Provenance) -> dict:
    """The images-table row of a mined image (after the pipeline's filters)."""
    return {
        "image_uri": image.uri,
        "image_sha256": image.sha256,
        "image_width": image.width,
        "image_height": image.height,
        "masks_generated": image.masks_generated,
        "masks_kept": len(image.masks),
        "prompts_decoded": image.prompts_decoded,
        "decode_seconds": image.decode_seconds,
        "inference_seconds": image.inference_seconds,
        "run_id": provenance.run_id,
        "created_at": provenance.created_at,
    }


def embedding_rows(image: MinedImage, provenance: Provenance) -> list[dict]:
    """The embeddings-table row of a mined image, if its embedding was kept."""
    if image.embedding is None:
        return []
    embedding = np.ascontiguousarray(image.embedding, dtype="<f2")
    return [
        {
            "image_uri": image.uri,
            "image_sha256": image.sha256,
            "model_type": image.model_type,
            "checkpoint_sha256": image.checkpoint_sha256,
            "input_size": [int(v) for v in image.input_size],
            "shape": [int(v) for v in embedding.shape],
            "embedding": embedding.tobytes(),
            "run_id": provenance.run_id,
            "created_at": provenance.created_at,
        }
    ]


def error_row(failure: Failure, provenance: Provenance) -> dict:
    return failure.to_row(provenance.run_id, provenance.created_at)
