"""The `maskmine inspect` and `maskmine export` subcommands (argument parsing, messages).

Each returns a process exit code: 0, or 2 with a one-line message on stderr for a run folder
that is missing or holds no tables (never a traceback for those).
"""

from __future__ import annotations

import argparse
import sys

from apache_beam.io.filesystems import FileSystems

from .coco import export_coco_streaming
from .dataset import Progress, index_run, iter_images
from .inspect import DEFAULT_IMAGES, DEFAULT_TOP_K, inspect_run
from .labelstudio import DEFAULT_TASKS_PER_FILE, export_labelstudio, image_url
from .sa1b import export_sa1b, json_names
from .sa1b_tar import DEFAULT_SHARD_IMAGES, DEFAULT_SHARD_MB, export_sa1b_tar
from .tables import RunError

FORMATS = ("sa1b", "coco", "labelstudio", "sa1b-tar")


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
        "--top_k",
        "--top-k",
        "--max_masks",
        "--max-masks",
        dest="top_k",
        type=int,
        default=DEFAULT_TOP_K,
        help="draw the K masks of each image with the highest predicted IoU (0: all; "
        f"default {DEFAULT_TOP_K}); --max_masks is the older name",
    )
    parser.add_argument(
        "--boxes", action="store_true", help="also outline each mask's box in its colour"
    )
    parser.add_argument(
        "--points", action="store_true", help="also mark each mask's prompt point(s)"
    )
    return parser


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskmine export",
        description="Export a finished run's masks: SA-1B JSON (one file per image, into a "
        "folder), one COCO instance-format JSON file, Label Studio tasks with the masks as "
        "pre-annotations, or SA-1B tar shards (image + JSON) for training. Streams image by "
        "image: memory holds one image's masks.",
    )
    parser.add_argument("output", metavar="OUTPUT", help="run folder (maskmine --output)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument(
        "--dest",
        required=True,
        metavar="DIR_OR_FILE",
        help="coco: a .json file; sa1b, labelstudio, sa1b-tar: a folder (local or gs://)",
    )
    parser.add_argument(
        "--local_files_root",
        default="/",
        help="labelstudio: Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; local image "
        "paths become /data/local-files/?d=<path under it> (gs:// URIs stay as they are)",
    )
    parser.add_argument(
        "--tasks_per_file",
        type=int,
        default=DEFAULT_TASKS_PER_FILE,
        help=f"labelstudio: tasks per tasks-NNNNN.json (default {DEFAULT_TASKS_PER_FILE})",
    )
    parser.add_argument(
        "--shard_images",
        type=int,
        default=DEFAULT_SHARD_IMAGES,
        help=f"sa1b-tar: at most this many images per shard (default {DEFAULT_SHARD_IMAGES})",
    )
    parser.add_argument(
        "--shard_mb",
        type=float,
        default=DEFAULT_SHARD_MB,
        help="sa1b-tar: at most this many MiB per shard, unless one image alone is larger "
        f"(default {DEFAULT_SHARD_MB:g})",
    )
    return parser


def inspect_main(argv: list[str]) -> int:
    args = inspect_parser().parse_args(argv)
    dest = args.out or FileSystems.join(args.output, "inspect")
    try:
        if args.top_k < 0:
            raise RunError(f"--top_k must be 0 (all) or more, got {args.top_k}")
        result = inspect_run(args.output, dest, args.images, args.top_k, args.boxes, args.points)
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
        if args.tasks_per_file < 1:
            raise ValueError(f"--tasks_per_file must be at least 1, got {args.tasks_per_file}")
        if args.shard_images < 1 or not args.shard_mb > 0:
            raise ValueError("--shard_images must be at least 1 and --shard_mb above 0")
        index = index_run(args.output)
        if args.format == "labelstudio":  # every URL before the first file is written
            for image in index.images:
                image_url(image.uri, args.local_files_root)
        progress = Progress("maskmine export", len(index.images))
        images = iter_images(args.output, index, progress)
        if args.format == "sa1b":
            names = dict(zip((im.uri for im in index.images), json_names(index.images)))
            paths = export_sa1b(images, args.dest, names, index.first_ann_ids)
            where = f"{len(paths)} files under {args.dest}"
        elif args.format == "coco":
            description = f"maskmine masks of {args.output}"
            where = export_coco_streaming(index, images, args.dest, description)
        elif args.format == "labelstudio":
            root, per_file = args.local_files_root, args.tasks_per_file
            paths = export_labelstudio(images, args.dest, root, per_file)
            where = f"{len(paths)} task files and labeling_config.xml under {args.dest}"
        else:
            shards = export_sa1b_tar(
                images, args.dest, index.first_ann_ids, args.shard_images, args.shard_mb
            )
            where = f"{len(shards['shards'])} shards and index.json under {args.dest}"
            if shards["skipped"]:
                first = shards["skipped"][0]
                print(
                    f"maskmine export: {len(shards['skipped'])} images left out, source "
                    f"unreadable (first: {first['image_uri']}: {first['error']})",
                    file=sys.stderr,
                )
        progress.done()
    except ValueError as e:  # RunError included: no run there, or a bad flag value
        return _fail("export", e)
    print(
        f"maskmine export: {len(index.images)} images, {index.masks} masks as {args.format} "
        f"-> {where}",
        file=sys.stderr,
    )
    return 0


COMMANDS = {"inspect": inspect_main, "export": export_main}
