"""Where a run's tables live under OUTPUT: the one owner of table names and file names.

Batch runs write ``OUTPUT/<table>/part-<run_id>-SSSSS-of-NNNNN.parquet``; streaming runs
``OUTPUT/<table>/part-<run_id>-<START>-<END>-<FIRING>-SSSSS-of-NNNNN.parquet`` (one set per
window firing). Readers take ``OUTPUT/<table>/*.parquet``: Beam's temporary files and
folders (``beam-temp-*``, ``.temp-*``) never match. ``OUTPUT/_runs/<run_id>.json`` holds a
batch run's id (pipeline/claims.py).

Pure string functions: local paths and ``gs://`` URIs alike, no I/O.
"""

from __future__ import annotations

import os
import re

MASKS = "masks"
IMAGES = "images"
ERRORS = "errors"
EMBEDDINGS = "embeddings"
# Every table a run may write (embeddings only with --embeddings).
TABLES = (MASKS, IMAGES, ERRORS, EMBEDDINGS)

PART_SUFFIX = ".parquet"
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_GLOB_SPECIAL = re.compile(r"([*?\[])")


def join(base: str, *names: str) -> str:
    """`base`/`names`: "/" for URIs with a scheme (gs://), os.path.join for local paths."""
    if _SCHEME.match(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(base, *names)


def glob_escape(path: str) -> str:
    """`path` as a glob pattern that matches exactly it: *, ? and [ become [*], [?], [[]
    (FileSystems.match patterns follow fnmatch)."""
    return _GLOB_SPECIAL.sub(r"[\1]", path)


def claim_path(output: str, run_id: str) -> str:
    """The marker a batch run creates to hold its run id (pipeline/claims.py)."""
    return join(output, "_runs", f"{run_id}.json")


def table_dir(output: str, table: str) -> str:
    """The folder of `table` under `output`."""
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}: tables are {TABLES}")
    return join(output, table)


def part_prefix(output: str, table: str, run_id: str) -> str:
    """File-name prefix of one batch run's part files of `table` (the sink adds shards)."""
    return join(table_dir(output, table), f"part-{run_id}")


def table_glob(output: str, table: str) -> str:
    """Pattern of every part file of `table` under `output`, of every run."""
    return join(glob_escape(table_dir(output, table)), "*" + PART_SUFFIX)


def run_glob(output: str, table: str, run_id: str) -> str:
    """Pattern of the part files of `table` that run `run_id` wrote (batch and streaming)."""
    return glob_escape(part_prefix(output, table, run_id)) + "-*" + PART_SUFFIX
