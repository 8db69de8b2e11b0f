"""Flex template entry point: build and submit the maskmine job, then exit.

The template launcher runs this file (FLEX_TEMPLATE_PYTHON_PY_FILE). Unlike
`maskmine`, it does not wait for the job: a flex template launcher must return once the
job is submitted.
"""

from __future__ import annotations

import logging
import sys

import apache_beam as beam

from pipeline.cli import resolved_options
from pipeline.graph import build_pipeline


def run(argv: list[str]) -> int:
    options = resolved_options(argv)
    if options is None:
        return 2
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    pipeline.run()
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    sys.exit(run(sys.argv[1:]))
