"""The `maskmine inspect` and `maskmine export` subcommands (argument parsing, messages).

Each returns a process exit code: 0, or 2 with a one-line message on stderr for a run folder
that is missing or holds no tables (never a traceback for those).
"""

from __future__ import annotations

import argparse
import sys

from apache_beam.io.filesystems import FileSystems

from .coco import export_coco
from .dataset import load_run
from .inspect import DEFAULT_IMAGES, DEFAULT_MAX_MASKS, inspect_run
from .sa1b import export_sa1b
from .tables import RunError

FORMATS = ("sa1b", "coco")


def _fail(command: str, error: Exception) -> int:
    print(f"maskmine {command}: error: {error}", file=sys.stderr)
    return 2


def inspect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskmine inspect",
        description="Draw a finished run: masks over chosen images (PNG), histograms of the "
        "whole run (PNG) and an HTML page linking them.",
    )
    parser.add_argument("output", metavar="OUTPUT", help="run folder (maskmine --output)")
    parser.add_argument(
        "--images",
        nargs="+",
        metavar="N_OR_URI",
        help=f"how many images to draw (the first N by URI; default {DEFAULT_IMAGES}), "
        "or the image URIs to draw",
    )
    parser.add_argument(
        "--out",
        help="destination folder, local or gs:// (default OUTPUT/inspect)",
    )
    parser.add_argument(
        "--max_masks",
        "--max-masks",
        type=int,
        default=DEFAULT_MAX_MASKS,
        help="draw at most this many masks per image, highest predicted IoU first (0: all)",
    )
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskmine export",
        description="Export a finished run's masks as SA-1B JSON (one file per image, into a "
        "folder) or as one COCO instance-format JSON file.",
    )
    parser.add_argument("output", metavar="OUTPUT", help="run folder (maskmine --output)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument(
        "--dest",
        required=True,
        metavar="DIR_OR_FILE",
        help="sa1b: a folder; coco: a .json file (local or gs://)",
    )
    return parser


def inspect_main(argv: list[str]) -> int:
    args = inspect_parser().parse_args(argv)
    dest = args.out or FileSystems.join(args.output, "inspect")
    try:
        result = inspect_run(args.output, dest, args.images, args.max_masks)
    except RunError as e:
        return _fail("inspect", e)
    print(
        f"maskmine inspect: {len(result.overlays)} overlays, summary and page written; "
        f"open {result.index}",
        file=sys.stderr,
    )
    return 0


def export_main(argv: list[str]) -> int:
    args = export_parser().parse_args(argv)
    try:
        images = load_run(args.output)
    except RunError as e:
        return _fail("export", e)
    masks = sum(len(im.masks) for im in images)
    if args.format == "sa1b":
        paths = export_sa1b(images, args.dest)
        where = f"{len(paths)} files under {args.dest}"
    else:
        where = export_coco(images, args.dest, description=f"maskmine masks of {args.output}")
    print(
        f"maskmine export: {len(images)} images, {masks} masks as {args.format} -> {where}",
        file=sys.stderr,
    )
    return 0


COMMANDS = {"inspect": inspect_main, "export": export_main}
