"""The Parquet sinks of the output tables (file layout: schemas/layout.py).

Batch: `WriteTable`, Beam's WriteToParquet, one set of part files per run (zstd), so a
resumed run adds to the tables instead of replacing them. Streaming: `WriteWindowedTable`,
one set of files per window and firing, written with `fileio.WriteToFiles` and
`ParquetSink` (Beam's WriteToParquet loses rows when one bundle holds two windows).
Both validate every row against its table's schema (`schemas.tables.to_table`'s checks).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import uuid
from typing import Any, BinaryIO

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio, parquetio
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms.window import GlobalWindow

from schemas import layout, tables


def checked_row(row: dict, schema: pa.Schema) -> dict:
    """`row` unchanged if it fits `schema`; ValueError naming the field otherwise."""
    tables.check_row(row, schema)
    return row


# Arrow bytes a Parquet writer buffers before it writes a row group. Beam's default,
# 64 MB per table and bundle, is memory that grows with every image up to that bound
# (peak RSS +22 MB from 200 to 3000 small images; +8 MB with 1 MB). A 1 MB row group
# holds about a thousand mask rows, the record batch size.
ROW_GROUP_BYTES = 1 << 20


def _delete_arg(path: str) -> str:
    # The local FileSystems.delete matches its argument as a pattern first; GCS deletes
    # the exact object name.
    return path if path.startswith("gs://") else layout.glob_escape(path)


class _EscapedParquetSink(parquetio._ParquetSink):
    """Beam's Parquet sink, with its finalize working under an output whose path holds
    glob characters (``out[1]``): Beam globs the temporary and final names unescaped, so
    it found neither ("src and dst files do not exist") and every run crashed at the end.
    """

    def _get_final_name_glob(self, num_shards, w=None):
        name = super()._get_final_name_glob(num_shards, w)
        prefix = self.file_path_prefix.get()  # the name starts with it (see Beam)
        return layout.glob_escape(prefix) + name[len(prefix) :]

    def _check_state_for_finalize_write(self, writer_results, num_shards, window=None):
        # Beam's method (2.77), the temporary folder's glob escaped.
        if not writer_results:
            return [], [], [], 0
        folder = FileSystems.split(writer_results[0])[0]
        src_glob = FileSystems.join(layout.glob_escape(folder), "*")
        dst_glob = self._get_final_name_glob(num_shards, window)
        src_found = {m.path for r in FileSystems.match([src_glob]) for m in r.metadata_list}
        dst_found = {m.path for r in FileSystems.match([dst_glob]) for m in r.metadata_list}
        src_files, dst_files, delete_files, num_skipped = [], [], [], 0
        for shard_num, src in enumerate(writer_results):
            dst = self._get_final_name(shard_num, num_shards, window)
            if src not in src_found and dst not in dst_found:
                raise BeamIOError(f"src and dst files do not exist. src: {src}, dst: {dst}")
            if src not in src_found:  # renamed by an earlier attempt of this finalize
                num_skipped += 1
                continue
            if dst in dst_found and FileSystems.checksum(src) == FileSystems.checksum(dst):
                delete_files.append(_delete_arg(src))
                continue
            src_files.append(src)
            dst_files.append(dst)
        self._report_sink_lineage(dst_glob, dst_files)
        return src_files, dst_files, delete_files, num_skipped

    def finalize_windowed_write(self, init_result, writer_results, pre_finalize_results, w=None):
        yield from super().finalize_windowed_write(
            init_result, writer_results, pre_finalize_results, w
        )
        if layout.glob_escape(init_result) == init_result:
            return  # no glob character: Beam's own delete of the temporary folder worked
        # Beam's delete matched the temporary folder as a pattern and found nothing.
        with contextlib.suppress(OSError):  # as Beam: a leftover folder is not an error
            if not init_result.startswith("gs://"):
                shutil.rmtree(init_result)
                return
            pattern = layout.glob_escape(init_result.rstrip("/")) + "/**"
            found = FileSystems.match([pattern])[0].metadata_list
            if found:  # GCS deletes these exact object names
                FileSystems.delete([m.path for m in found])


class WriteTable(beam.PTransform):
    """Rows (dicts) -> Parquet files of one table under `output`."""

    def __init__(self, output: str, table: str, run_id: str) -> None:
        super().__init__()
        self.output, self.table, self.run_id = output, table, run_id
        self.schema = tables.SCHEMAS[table]

    def expand(self, rows):
        write = beam.io.WriteToParquet(
            layout.part_prefix(self.output, self.table, self.run_id),
            schema=self.schema,
            codec="zstd",
            file_name_suffix=".parquet",
            record_batch_size=1000,
            row_group_buffer_size=ROW_GROUP_BYTES,
        )
        # The same sink and state, with a finalize that escapes the output's path.
        write._sink.__class__ = _EscapedParquetSink
        return rows | "Validate" >> beam.Map(checked_row, self.schema) | "Write" >> write


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

    def __init__(self, output: str, table: str, run_id: str) -> None:
        super().__init__()
        self.output, self.table, self.run_id = output, table, run_id
        self.schema = tables.SCHEMAS[table]

    def expand(self, rows):
        directory = layout.table_dir(self.output, self.table)
        return rows | fileio.WriteToFiles(
            path=directory,
            file_naming=WindowedFileNaming(self.run_id),
            temp_directory=StaticValueProvider(str, layout.join(directory, f".temp-{self.run_id}")),
            sink=functools.partial(_parquet_sink, self.schema),
            shards=1,
        )
