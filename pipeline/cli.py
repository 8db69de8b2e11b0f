"""`maskmine`: mine masks from images. Any Beam pipeline option passes through.

maskmine --input 'data/*.jpg' --output out/ --checkpoint sam_vit_h_4b8939.pth
maskmine                                  # bundled sample images and model -> out/
maskmine --runner DataflowRunner --project P --region R --temp_location gs://b/tmp ...

Subcommands read a finished run back (no subcommand means mine):
maskmine inspect out/ [--images N | URI ...] [--out DIR]   # overlay PNGs, histograms, HTML
maskmine export out/ --format sa1b|sa1b-tar|coco|labelstudio --dest DIR_OR_FILE
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys

from apache_beam.options.pipeline_options import PipelineOptions

from .config import ConfigError, is_streaming, resolve_defaults
from .options import LocalRunOptions, MaskMineOptions, StreamingOptions
from .parts import mine_in_parts, remove_unfinished_runs
from .run import mine_once, say

SUBCOMMANDS = ("inspect", "export")
SUBCOMMANDS_HELP = """\
maskmine: mine segmentation masks with SAM into Parquet tables.

usage: maskmine [mining options]                  mine (all options below)
       maskmine inspect OUTPUT [--images N | URI ...] [--out DIR] [--top_k N] [--boxes] [--points]
                                                  overlay PNGs, run histograms, index.html
       maskmine export OUTPUT --format sa1b|sa1b-tar|coco|labelstudio --dest DIR_OR_FILE
                                                  SA-1B JSON per image or tar shards, one COCO
                                                  JSON, or Label Studio tasks
       maskmine inspect --help, maskmine export --help: their options

Mining options:
"""


def print_help() -> None:
    """The subcommands, then every mining flag: maskmine's own and the streaming ones."""
    parser = argparse.ArgumentParser(
        prog="maskmine",
        usage="maskmine [options]",
        epilog="Any other Beam pipeline option (--runner, --project, --region, "
        "--temp_location, ...) passes through to the runner.",
    )
    MaskMineOptions._add_argparse_args(parser)
    StreamingOptions._add_argparse_args(parser)
    LocalRunOptions._add_argparse_args(parser)
    print(SUBCOMMANDS_HELP, flush=True)
    parser.print_help()


def misspelled_flags(argv: list[str]) -> list[str]:
    """Flags that no pipeline option defines but one nearly does ("--commit-every",
    "--pred_iou_threshold"), with a suggestion each. Beam would log them as unparseable
    and run without them; flags not close to any pass on, for the runner."""
    parsers: list[argparse.ArgumentParser] = []
    PipelineOptions([]).get_all_options(add_extra_args_fn=parsers.append)
    try:
        _, unknown = parsers[0].parse_known_args(argv)
    except SystemExit:  # a bad value of a known flag: reported when options are read
        return []
    known = [s for action in parsers[0]._actions for s in action.option_strings]
    typos = []
    for arg in unknown:
        if not arg.startswith("--"):
            continue
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches("--" + name[2:].replace("-", "_"), known, 1, 0.8)
        if close:
            typos.append(f"{name} (did you mean {close[0]}?)")
    return typos


def resolved_options(argv: list[str]) -> MaskMineOptions | None:
    """Parsed and checked options (defaults filled in), or None after printing why not."""
    options = MaskMineOptions(argv)
    try:
        resolve_defaults(options)
    except ConfigError as e:
        print(f"maskmine: error: {e}", file=sys.stderr)
        return None
    return options


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        # Imported only here: mining needs none of matplotlib and the exporters.
        from exports.commands import COMMANDS

        return COMMANDS[argv[0]](argv[1:])
    if any(a in ("-h", "--help") for a in argv):
        print_help()
        return 0
    typos = misspelled_flags(argv)
    if typos:
        print(f"maskmine: error: unknown option {', '.join(typos)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = resolved_options(argv)
    if options is None:
        return 2
    print(
        f"maskmine: run {options.run_id}: {options.input} -> {options.output} "
        f"(checkpoint {options.checkpoint or options.model_type})",
        file=sys.stderr,
    )
    if options.skip_existing and not is_streaming(options):
        # Before reading what is mined: a killed run's masks must not stay beside the
        # masks this run mines again for the same images.
        try:
            remove_unfinished_runs(options.output)
        except ConfigError as e:
            print(f"maskmine: error: {e}", file=sys.stderr)
            return 2
    if options.view_as(LocalRunOptions).commit_every:
        try:
            status, counts = mine_in_parts(options)
        except ConfigError as e:  # e.g. earlier outputs that cannot be listed
            print(f"maskmine: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # while listing, or between parts
            say("interrupted")
            return 130
        if status == 0:
            say("all parts done; counters summed over the parts:")
            print("\n".join(f"  {k}: {v}" for k, v in sorted(counts.items())), file=sys.stderr)
    else:
        status, counts = mine_once(options)
    if status or counts is None:
        return status
    failed = counts.get("inputs_failed", 0)
    if failed and not counts.get("images_mined", 0):
        # Every input failed (a mistyped path, a folder of non-images): say so and exit
        # non-zero so that scripts notice, rather than report an empty success.
        say(f"no image was mined; {failed} input(s) failed, reasons in {options.output}/errors/")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
