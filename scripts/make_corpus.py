"""A hostile test corpus: every kind of file a listing must account for.

    python -m scripts.make_corpus DIR      # writes DIR/corpus/, DIR/manifest/, DIR/elsewhere/

`make_corpus(dir)` returns the `--input`s to mine it with and, for every entry they list,
what a run must make of it: "image" (a row in images/), "error" with a piece of the reason
(a row in errors/), or "skipped" (counted in files_skipped_by_extension). Nothing is
committed as binary: every file is made here, by Pillow or by hand. Cases the OS refuses
to create (a name longer than NAME_MAX) are reported in `not_created`, with why.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from transforms.uris import IMAGE_EXTENSIONS, escaped_name


@dataclass
class Corpus:
    """inputs: --input values; expected: URI as recorded -> ("image" | "error" | "skipped",
    a piece of the error reason or ""); not_created: cases this OS refused, with why."""

    inputs: list[str]
    expected: dict[str, tuple[str, str]] = field(default_factory=dict)
    not_created: list[str] = field(default_factory=list)


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = np.zeros((30, 40, 3), np.uint8) + rng.integers(0, 60, 3, dtype=np.uint8)
    img[5:20, 8:30] = rng.integers(80, 255, 3)
    return Image.fromarray(img)


def _encoded(fmt: str, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    _picture(seed).save(buf, format=fmt)
    return buf.getvalue()


def _deep_file(base: Path, data: bytes) -> str:
    """A PNG whose path is longer than PATH_MAX, made through folder descriptors (no path
    that long can be passed to the OS); its path as a string."""
    limit = os.pathconf(str(base), "PC_PATH_MAX")
    part = "d" * min(200, os.pathconf(str(base), "PC_NAME_MAX"))
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    path = str(base)
    try:
        while len(path) <= limit:
            os.mkdir(part, dir_fd=fd)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, path = child, f"{path}/{part}"
        out = os.open("deep.png", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd)
        with os.fdopen(out, "wb") as f:
            f.write(data)
    finally:
        os.close(fd)
    return f"{path}/deep.png"


def make_corpus(root: Path) -> Corpus:
    """Write the corpus under `root` (absolute, empty or new); see the module docstring."""
    root = Path(os.path.abspath(root))
    corpus, manifest_dir, elsewhere = root / "corpus", root / "manifest", root / "elsewhere"
    for d in (corpus, manifest_dir, elsewhere):
        d.mkdir(parents=True)
    # The folder, a "*" glob over the odd names (listed twice: mined and errored once),
    # and a manifest.
    inputs = [str(corpus), f"{corpus}/names/*", str(manifest_dir / "list.txt")]
    out = Corpus(inputs=inputs)
    expect = out.expected

    def put(rel: str, data: bytes, outcome: str, reason: str = "", base: Path = corpus) -> str:
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[str(path)] = (outcome, reason)
        return str(path)

    # Every extension of the default list, each file in its own format.
    registered = Image.registered_extensions()
    for k, ext in enumerate(IMAGE_EXTENSIONS):
        put(f"formats/image{ext}", _encoded(registered[ext], k), "image")
    # Extensionless (content-addressed) names: images, and a text file.
    put("hashed/3f9a0c4e1b", _encoded("PNG", 1), "image")
    put("hashed/d41d8cd98f00", _encoded("JPEG", 2), "image")
    put("hashed/README", b"not an image, no extension\n", "error", "not an image")
    # Non-images under image extensions, a zero-byte file, a truncated image.
    put("bad/text.jpg", b"this is text\n", "error", "not an image")
    put("bad/page.png", b"<html></html>\n", "error", "not an image")
    put("bad/empty.png", b"", "error", "empty file")
    put("bad/truncated.jpg", _encoded("JPEG", 3)[:300], "error", "truncated")
    # Other extensions: counted as skipped.
    put("other/notes.txt", b"notes\n", "skipped")
    put("other/data.json", b"{}\n", "skipped")
    # Odd names: a backslash, leading spaces, a leading "#", a non-UTF-8 byte.
    put("names/back\\slash.png", _encoded("PNG", 4), "image")
    put("names/  leading spaces.png", _encoded("PNG", 5), "image")
    put("names/#hash.png", _encoded("PNG", 6), "image")
    raw = os.fsencode(corpus / "names") + b"/bad\xff-byte.png"
    with open(raw, "wb") as f:
        f.write(_encoded("PNG", 7))
    expect[escaped_name(os.fsdecode(raw))] = ("error", "not valid UTF-8")
    # Links: dangling, a loop of two, one to itself, a folder linked from elsewhere, and a
    # link to an enclosing folder.
    links = corpus / "links"
    links.mkdir()
    (links / "dangling.png").symlink_to(root / "nowhere.png")
    expect[str(links / "dangling.png")] = ("error", "dangling symbolic link")
    (links / "loop_a.png").symlink_to(links / "loop_b.png")
    (links / "loop_b.png").symlink_to(links / "loop_a.png")
    (links / "self.png").symlink_to(links / "self.png")
    for name in ("loop_a.png", "loop_b.png", "self.png"):
        expect[str(links / name)] = ("error", "symbolic link loop")
    (elsewhere / "inside.png").write_bytes(_encoded("PNG", 8))
    (links / "folder").symlink_to(elsewhere, target_is_directory=True)
    expect[str(links / "folder" / "inside.png")] = ("image", "")
    (links / "up").symlink_to(corpus, target_is_directory=True)
    expect[str(links / "up")] = ("error", "symbolic link loop")
    # A path longer than PATH_MAX, and a name longer than NAME_MAX (the OS refuses it).
    expect[_deep_file(corpus, _encoded("PNG", 9))] = ("error", "path too long")
    too_long = "n" * (os.pathconf(str(corpus), "PC_NAME_MAX") + 1) + ".png"
    try:
        put(too_long, _encoded("PNG", 10), "error", "path too long")
    except OSError as e:
        out.not_created.append(f"a {len(too_long)}-character file name: {e.strerror}")
    # A manifest whose lines begin with spaces and "#" (names, not comments), naming a
    # missing file too; the files beside it are not listed by any folder input.
    entries = ["  spaced.png", "#not-a-comment.png", "missing.png"]
    put("  spaced.png", _encoded("PNG", 11), "image", base=manifest_dir)
    put("#not-a-comment.png", _encoded("PNG", 12), "image", base=manifest_dir)
    expect[str(manifest_dir / "missing.png")] = ("error", "file not found")
    (manifest_dir / "list.txt").write_text("\n".join(entries) + "\n")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    corpus = make_corpus(Path(argv[0]))
    kinds = [kind for kind, _ in corpus.expected.values()]
    print(f"inputs: {' '.join(corpus.inputs)}")
    print(", ".join(f"{k}: {kinds.count(k)}" for k in ("image", "error", "skipped")))
    for reason in corpus.not_created:
        print(f"not created: {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
