"""Write infra/flex-template/metadata.json from the pipeline's own options.

python infra/make_template_metadata.py          # rewrite the committed file
python infra/make_template_metadata.py --check  # exit 1 if the committed file is stale

The parameters are exactly the options of MaskMineOptions and StreamingOptions (batch and
`--streaming` jobs), so the template cannot drift from the CLI; tests/test_infra.py checks
the committed JSON equals a fresh generation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "infra" / "flex-template" / "metadata.json"

INT_RE = r"^[0-9]+$"
FLOAT_RE = r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$"


if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from pipeline.options import MaskMineOptions, StreamingOptions, parse_bool  # noqa: E402

# Every options class whose flags the template exposes, in order.
OPTION_CLASSES = (MaskMineOptions, StreamingOptions)


def option_actions() -> list[argparse.Action]:
    """The argparse actions of OPTION_CLASSES (maskmine's options, nothing of Beam's)."""
    parser = argparse.ArgumentParser(add_help=False)
    for options_class in OPTION_CLASSES:
        options_class._add_argparse_args(parser)
    return [a for a in parser._actions if a.option_strings]


def _label(name: str) -> str:
    fixed = {"iou": "IoU", "nms": "NMS", "id": "ID"}
    words = name.replace("_", " ").capitalize().split()
    return " ".join(fixed.get(w, w) for w in words)


def parameter(action: argparse.Action) -> dict:
    name = action.dest
    is_flag = action.type is parse_bool
    help_text = (action.help or name.replace("_", " ").capitalize() + ".").replace("%%", "%")
    if is_flag:
        help_text += " true or false (default false)."
    elif action.default is not None:
        help_text += f" Default: {action.default}."
    if isinstance(action, argparse._AppendAction):
        help_text += " One value per template parameter."
    param = {
        "name": name,
        "label": _label(name),
        "helpText": help_text,
        "isOptional": not action.required,
    }
    if is_flag:
        param["regexes"] = ["^(true|false)$"]
    elif action.choices:
        param["regexes"] = ["^(" + "|".join(map(str, action.choices)) + ")$"]
    elif action.type is int:
        param["regexes"] = [INT_RE]
    elif action.type is float:
        param["regexes"] = [FLOAT_RE]
    elif name in ("output", "checkpoint"):
        param["regexes"] = [r"^\S+$"]
    return param


def metadata() -> dict:
    return {
        "name": "maskmine",
        "description": "Mine segmentation masks from images with Segment Anything (SAM) on "
        "GPU workers. Parameters are the `maskmine` command's own options; streaming "
        "jobs (Beam's streaming=true) also take the streaming ones.",
        "parameters": [parameter(a) for a in option_actions()],
    }


def render() -> str:
    return json.dumps(metadata(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Fail if the file is stale.")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python infra/make_template_metadata.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(metadata()['parameters'])} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
