"""Rows of the three output tables and the Parquet sinks that write them.

Batch: OUTPUT/{masks,images,errors,embeddings}/part-RUNID-SSSSS-of-NNNNN.parquet (zstd):
each run writes its own files, so a resumed run adds to the tables instead of replacing
them. Streaming: one set of files per window and firing,
OUTPUT/TABLE/part-RUNID-STARTZ-ENDZ-FIRING-SSSSS-of-NNNNN.parquet, written with
`fileio.WriteToFiles` and `ParquetSink` (Beam's WriteToParquet loses rows when one bundle
holds two windows).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import uuid
from typing import Any, BinaryIO

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms.window import GlobalWindow

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

    def stamped(self) -> Provenance:
        """The same facts with created_at = now (rows of a long streaming job)."""
        return dataclasses.replace(self, created_at=dt.datetime.now(dt.timezone.utc))


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


# Arrow bytes a Parquet writer buffers before it writes a row group. Beam's default,
# 64 MB per table and bundle, is memory that grows with every image up to that bound
# (peak RSS +22 MB from 200 to 3000 small images; +8 MB with 1 MB). A 1 MB row group
# holds about a thousand mask rows, the record batch size.
ROW_GROUP_BYTES = 1 << 20


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
            row_group_buffer_size=ROW_GROUP_BYTES,
        )


class ParquetSink(fileio.FileSink):
    """`fileio.FileSink` writing dict rows as one zstd Parquet file of `schema`.

    Rows are validated by `schemas.tables.to_table` and written in row groups of at most
    `batch_rows` rows, so memory stays bounded whatever the window holds.
    """

    def __init__(self, schema: pa.Schema, batch_rows: int = 1000) -> None:
        self.schema, self.batch_rows = schema, batch_rows
        self._rows: list[dict] = []
        self._writer: pq.ParquetWriter | None = None

    def open(self, fh: BinaryIO) -> None:
        self._rows = []
        self._writer = pq.ParquetWriter(fh, self.schema, compression="zstd")

    def write(self, record: dict) -> None:
        self._rows.append(record)
        if len(self._rows) >= self.batch_rows:
            self._write_rows()

    def flush(self) -> None:
        # Called once, before WriteToFiles closes the handle: the footer must be written now.
        self._write_rows()
        self._writer.close()

    def _write_rows(self) -> None:
        if self._rows:
            self._writer.write_table(tables.to_table(self._rows, self.schema))
            self._rows = []


def _parquet_sink(schema: pa.Schema, destination: Any) -> ParquetSink:
    return ParquetSink(schema)


def _utc(ts) -> str:
    return ts.to_utc_datetime().strftime("%Y%m%dT%H%M%SZ")


class WindowedFileNaming:
    """WriteToFiles naming: part-RUN-START-END-FIRING-SSSSS-of-NNNNN.parquet.

    WriteToFiles names a window's files by window only, so a late firing of a window would
    overwrite the on-time files. FIRING is a random token drawn when WriteToFiles starts
    naming one firing's files (shard 0), so every firing gets its own set.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self._firing = ""

    def __call__(self, window, pane, shard_index, total_shards, compression, destination) -> str:
        if shard_index == 0 or not self._firing:
            self._firing = uuid.uuid4().hex[:8]
        span = "" if window == GlobalWindow() else f"-{_utc(window.start)}-{_utc(window.end)}"
        return (
            f"part-{self.run_id}{span}-{self._firing}-"
            f"{int(shard_index):05d}-of-{int(total_shards):05d}.parquet"
        )


class WriteWindowedTable(beam.PTransform):
    """Windowed rows (dicts) -> Parquet files of one table, one set per window firing.

    For streaming: the input must be in non-global windows with a trigger. Temporary files
    go to OUTPUT/TABLE/.temp-RUNID/ (readers skip names starting with ".").
    """

    def __init__(self, output: str, table: str, schema: pa.Schema, run_id: str) -> None:
        super().__init__()
        self.output, self.table, self.schema, self.run_id = output, table, schema, run_id

    def expand(self, rows):
        directory = FileSystems.join(self.output, self.table)
        return rows | fileio.WriteToFiles(
            path=directory,
            file_naming=WindowedFileNaming(self.run_id),
            temp_directory=StaticValueProvider(
                str, FileSystems.join(directory, f".temp-{self.run_id}")
            ),
            sink=functools.partial(_parquet_sink, self.schema),
            shards=1,
        )
