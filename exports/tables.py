"""Read a finished run's Parquet tables (OUTPUT/<table>/*.parquet) through Beam's FileSystems.

FileSystems resolves the scheme, so local folders and gs:// buckets read alike. A run folder
holds one set of part files per pipeline run; a table here is all of them concatenated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas import layout, tables


class RunError(ValueError):
    """OUTPUT is not a readable maskmine run (missing, or holds no tables); says why."""


def table_files(output: str, table: str) -> list[str]:
    """Sorted paths of the Parquet part files of `table` under `output` (may be empty)."""
    pattern = layout.table_glob(output, table)
    try:
        matched = FileSystems.match([pattern])[0].metadata_list
    except Exception:  # Beam raises when a local folder is missing; that is "no files"
        return []
    return sorted(m.path for m in matched)


def check_run(output: str) -> None:
    """Raise RunError unless `output` holds at least one of the tables (a run where every
    input failed has only errors/)."""
    if any(table_files(output, table) for table in layout.TABLES):
        return
    # A gs:// "folder" is only a prefix, so exists() alone cannot tell; look for any object.
    try:
        anything = FileSystems.exists(output) or bool(
            FileSystems.match([FileSystems.join(output, "**")], limits=[1])[0].metadata_list
        )
    except Exception:
        anything = False
    if not anything:
        raise RunError(f"{output}: no such run folder")
    raise RunError(
        f"{output}: no maskmine tables here (expected {output}/images/*.parquet and "
        f"{output}/masks/*.parquet, as written by `maskmine --output {output}`)"
    )


def _read_columns(f, schema: pa.Schema, columns: Sequence[str]) -> pa.Table:
    """`columns` of one part file; a column added by a later schema version than the
    file's (e.g. images.prompts_decoded, version 2) reads as nulls."""
    parquet = pq.ParquetFile(f)
    present = set(parquet.schema_arrow.names)
    return _with_nulls(parquet.read(columns=[c for c in columns if c in present]), schema, columns)


def _with_nulls(part: pa.Table, schema: pa.Schema, columns: Sequence[str]) -> pa.Table:
    """`part` with `columns` in order; a column it lacks (a file of an older schema
    version) is added as nulls of the current type."""
    for name in columns:
        if name not in part.column_names:
            field = schema.field(name)
            part = part.append_column(field.with_nullable(True), pa.nulls(len(part), field.type))
    return part.select(list(columns))


def iter_table(
    output: str, table: str, columns: Sequence[str] | None = None, batch_rows: int = 1024
) -> Iterator[pa.Table]:
    """The rows of `table` under `output` as tables of at most `batch_rows` rows, file by
    file (sorted paths), never more than one batch and one file's footer in memory; columns
    missing from older-version files read as nulls, as in `read_table`."""
    schema = tables.SCHEMAS[table]
    wanted = list(columns) if columns is not None else schema.names
    for path in table_files(output, table):
        with FileSystems.open(path) as f:
            parquet = pq.ParquetFile(f)
            present = [c for c in wanted if c in set(parquet.schema_arrow.names)]
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=present):
                yield _with_nulls(pa.Table.from_batches([batch]), schema, wanted)


def read_table(
    output: str,
    table: str,
    columns: Sequence[str] | None = None,
    image_uris: Iterable[str] | None = None,
) -> pa.Table:
    """All rows of `table` under `output`, optionally only `columns` and rows of `image_uris`.

    A table with no files reads as an empty table of its schema, so that a run where every
    image failed still has (empty) masks and images tables.
    """
    schema = tables.SCHEMAS[table]
    wanted = list(columns) if columns is not None else schema.names
    uris = pa.array(sorted(set(image_uris)), pa.string()) if image_uris is not None else None
    # image_uri must be read to filter on it, even when the caller did not ask for it.
    read = wanted if uris is None or "image_uri" in wanted else [*wanted, "image_uri"]
    parts = []
    for path in table_files(output, table):
        with FileSystems.open(path) as f:
            part = _read_columns(f, schema, read)
        if uris is not None:
            part = part.filter(pc.is_in(part.column("image_uri"), value_set=uris))
        parts.append(part.select(wanted))
    if not parts:
        return schema.empty_table().select(wanted)
    # Part files of one schema version share a schema; metadata may differ across runs.
    return pa.concat_tables(parts, promote_options="default")
