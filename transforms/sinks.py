"""Rows of the three output tables and the Parquet sinks that write them.

Files go to OUTPUT/{masks,images,errors,embeddings}/part-RUNID-SSSSS-of-NNNNN.parquet
(zstd): each run writes its own files, so a resumed run adds to the tables
instead of replacing them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from schemas import tables

from .inference import MinedImage
from .records import Failure


@dataclasses.dataclass(frozen=True)
class Provenance:
    """Run-level facts stamped on every row."""

    run_id: str
    generator_params: str  # canonical JSON
    maskmine_version: str
    created_at: dt.datetime


def mask_rows(image: MinedImage, provenance: Provenance) -> list[dict]:
    """One masks-table row per mask of `image`."""
    rows = []
    for m in image.masks:
        rle = m["segmentation"]
        rows.append(
            {
                "mask_id": tables.mask_id(
                    image.sha256, rle["counts"], m["crop_box"], m["point_coords"]
                ),
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
                "model_type": image.model_type,
                "checkpoint_sha256": image.checkpoint_sha256,
                "generator_params": provenance.generator_params,
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


def table_prefix(output: str, table: str, run_id: str) -> str:
    return FileSystems.join(output, table, f"part-{run_id}")


class WriteTable(beam.PTransform):
    """Rows (dicts) -> Parquet files of one table under `output`."""

    def __init__(self, output: str, table: str, schema: pa.Schema, run_id: str) -> None:
        super().__init__()
        self.output, self.table, self.schema, self.run_id = output, table, schema, run_id

    def expand(self, rows):
        return rows | beam.io.WriteToParquet(
            table_prefix(self.output, self.table, self.run_id),
            schema=self.schema,
            codec="zstd",
            file_name_suffix=".parquet",
            record_batch_size=1000,
        )
