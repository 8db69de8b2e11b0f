"""`maskmine`: mine masks from images. Any Beam pipeline option passes through.

maskmine --input 'data/*.jpg' --output out/ --checkpoint sam_vit_h_4b8939.pth
maskmine                                  # bundled sample images and model -> out/
maskmine --runner DataflowRunner --project P --region R --temp_location gs://b/tmp ...
"""

from __future__ import annotations

import logging
import sys
import time

import apache_beam as beam

from .graph import ConfigError, build_pipeline, resolve_defaults, summarize
from .options import MaskMineOptions


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        MaskMineOptions(["--help"])  # argparse prints the help and exits
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = MaskMineOptions(argv)
    try:
        resolve_defaults(options)
    except ConfigError as e:
        print(f"maskmine: error: {e}", file=sys.stderr)
        return 2
    print(
        f"maskmine: run {options.run_id}: {options.input} -> {options.output} "
        f"(checkpoint {options.checkpoint or options.model_type})",
        file=sys.stderr,
    )
    start = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    result = pipeline.run()
    result.wait_until_finish()
    if options.view_as(beam.options.pipeline_options.StandardOptions).runner in (
        None,
        "DirectRunner",
    ):
        print(
            f"maskmine: done in {time.monotonic() - start:.1f} s, outputs under "
            f"{options.output}\n{summarize(result)}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
