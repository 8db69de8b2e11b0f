"""Image URIs from patterns, directories and manifests: matching, resolution, dedup, errors."""

import os
import pickle

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from PIL import Image

from transforms.read import ImageURIs
from transforms.records import Failure
from transforms.uris import (
    IMAGE_EXTENSIONS,
    ManifestError,
    is_manifest,
    list_image_uris,
    match_pattern,
    normalize_uri,
    read_manifest,
    resolve_entry,
)

IMAGE_NAMES = ["a.jpg", "b.png", "c.JPEG", "sub/d.webp", "sub/deeper/e.tif"]


@pytest.fixture
def tree(tmp_path):
    """tmp/imgs with 5 images at 3 depths, a text file and an empty directory."""
    root = tmp_path / "imgs"
    for name in IMAGE_NAMES:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tif": "TIFF"}
        Image.new("RGB", (4, 3), (10, 20, 30)).save(path, fmt[path.suffix.lower()])
    (root / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    return root


def images(root, *names):
    return sorted(str(root / n) for n in names)


def run(tmp_path, build):
    """Run build(pipeline) -> (uris, errors) on the in-process runner; return both as lists."""
    saved = {}
    with beam.Pipeline(runner=FnApiRunner()) as p:
        for name, pcoll in zip(("uris", "errors"), build(p)):
            path = str(tmp_path / f"{name}.pkl")
            saved[name] = path
            _ = (
                pcoll
                | f"List{name}" >> beam.combiners.ToList()
                | f"Save{name}" >> beam.Map(lambda v, path=path: _dump(v, path))
            )
    out = []
    for name in ("uris", "errors"):
        with open(saved[name], "rb") as f:
            out.append(pickle.load(f))
    return out


def _dump(values, path):
    with open(path, "wb") as f:
        pickle.dump(values, f)


# --- plain functions --------------------------------------------------------------------------


def test_directory_means_every_image_under_it(tree):
    assert match_pattern(str(tree), [".jpg", ".png"])[0] == images(tree, "a.jpg", "b.png")
    paths, reason = match_pattern(str(tree), (".jpg", ".jpeg", ".png", ".webp", ".tif"))
    assert (paths, reason) == (images(tree, *IMAGE_NAMES), None)
    assert match_pattern(str(tree) + "/", (".tif",)) == (images(tree, "sub/deeper/e.tif"), None)


def test_star_is_one_level_and_double_star_recurses(tree):
    exts = (".jpg", ".jpeg", ".png", ".webp", ".tif")
    assert match_pattern(f"{tree}/*", exts)[0] == images(tree, "a.jpg", "b.png", "c.JPEG")
    assert match_pattern(f"{tree}/**", exts)[0] == images(tree, *IMAGE_NAMES)
    assert match_pattern(f"{tree}/**.webp", exts)[0] == images(tree, "sub/d.webp")


def test_extension_filter_is_case_insensitive(tree):
    assert match_pattern(f"{tree}/*", (".jpeg",))[0] == images(tree, "c.JPEG")
    assert match_pattern(f"{tree}/*", (".JPG",))[0] == images(tree, "a.jpg")


@pytest.mark.parametrize(
    "pattern,reason",
    [
        ("{tmp}/nope/*.jpg", "no files match {tmp}/nope/*.jpg"),
        ("{tmp}/imgs/*.txt", "no image files match {tmp}/imgs/*.txt: 1 file(s) matched, none"),
        ("{tmp}/imgs/missing.jpg", "no such file or directory: {tmp}/imgs/missing.jpg"),
        ("{tmp}/empty", "no files under directory {tmp}/empty"),
    ],
)
def test_patterns_that_yield_nothing_say_why(tree, tmp_path, pattern, reason):
    paths, got = match_pattern(pattern.format(tmp=tmp_path), (".jpg", ".png"))
    assert paths == []
    assert got.startswith(reason.format(tmp=tmp_path))


def test_a_file_named_exactly_is_kept_whatever_its_extension(tree):
    assert match_pattern(str(tree / "notes.txt"), (".jpg",)) == ([str(tree / "notes.txt")], None)


def test_normalize_uri():
    assert normalize_uri("file:///data/./x/../a.jpg") == "/data/a.jpg"
    assert normalize_uri("  /data//a.jpg\n") == "/data/a.jpg"
    assert normalize_uri("rel/a.jpg") == os.path.join(os.getcwd(), "rel/a.jpg")
    # Object names are opaque: kept exactly.
    assert normalize_uri("gs://b/x//y/../a.jpg") == "gs://b/x//y/../a.jpg"


def test_resolve_entry_relative_to_the_manifest():
    assert resolve_entry("a.jpg", "/data/m") == "/data/m/a.jpg"
    assert resolve_entry("../b/a.jpg", "/data/m") == "/data/b/a.jpg"
    assert resolve_entry("/abs/a.jpg", "/data/m") == "/abs/a.jpg"
    assert resolve_entry("file:///abs/a.jpg", "/data/m") == "/abs/a.jpg"
    assert resolve_entry("gs://o/a.jpg", "/data/m") == "gs://o/a.jpg"
    assert resolve_entry("img/a.jpg", "gs://bkt/m") == "gs://bkt/m/img/a.jpg"
    assert resolve_entry("../a.jpg", "gs://bkt/m/n") == "gs://bkt/m/a.jpg"
    # ".." stops at the bucket, as it stops at a filesystem's root.
    assert resolve_entry("../../../a.jpg", "gs://bkt/m") == "gs://bkt/a.jpg"


def test_is_manifest():
    assert is_manifest("list.txt") and is_manifest("x/L.CSV") and is_manifest("gs://b/m.parquet")
    assert is_manifest("manifest:uris.lst")
    assert not is_manifest("data/*.jpg") and not is_manifest("gs://b/dir")


def test_text_manifest_takes_each_line_exactly_as_written(tree):
    # No comments, no stripping: "#" and spaces are legal in file names. Empty lines
    # (and CRLF line ends) are the only things left out.
    manifest = tree.parent / "lists" / "m.txt"
    manifest.parent.mkdir()
    manifest.write_bytes(
        b"../imgs/a.jpg\n\n#1.jpg\r\n  ../imgs/b.png \ngs://b/x.jpg\nweird\x1cname.png\n"
    )
    lists = tree.parent / "lists"
    assert read_manifest(str(manifest)) == [
        str(tree / "a.jpg"),
        str(lists / "#1.jpg"),
        str(lists / "  ../imgs/b.png "),
        "gs://b/x.jpg",
        str(lists / "weird\x1cname.png"),
    ]


def test_csv_manifest_columns(tree):
    manifest = tree / "m.csv"
    manifest.write_text("id,uri\n1,a.jpg\n2,sub/d.webp\n3,\n")
    assert read_manifest(str(manifest)) == images(tree, "a.jpg", "sub/d.webp")
    manifest.write_text("path,label\nb.png,cat\n")  # no "uri" column: the first one
    assert read_manifest(str(manifest)) == images(tree, "b.png")
    manifest.write_text("label,file\ncat,b.png\n")
    assert read_manifest(str(manifest), column="file") == images(tree, "b.png")
    with pytest.raises(
        ManifestError, match=r"has no column 'uri' \(columns: \['label', 'file'\]\)"
    ):
        read_manifest(str(manifest), column="uri")


def test_parquet_manifest_columns(tree):
    manifest = tree / "m.parquet"
    table = pa.table({"n": [1, 2, 3], "uri": ["a.jpg", None, "/abs/x.png"], "f": ["b.png"] * 3})
    pq.write_table(table, manifest)
    assert read_manifest(str(manifest)) == [str(tree / "a.jpg"), "/abs/x.png"]
    assert read_manifest(str(manifest), column="f") == [str(tree / "b.png")] * 3
    with pytest.raises(ManifestError, match="has no column 'path'"):
        read_manifest(str(manifest), column="path")
    with pytest.raises(ManifestError, match="column 'n' is int64, expected string"):
        read_manifest(str(manifest), column="n")


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("missing.txt", None, "cannot read manifest .*missing.txt: file not found"),
        ("empty.txt", b"\n\r\n\n", "lists no URIs"),
        ("empty.csv", b"", "lists no URIs"),
        ("header.csv", b"uri\n", "lists no URIs"),
        ("bad.parquet", b"PAR1 not really", "not a readable Parquet file"),
        ("latin1.txt", "caf\xe9.jpg\n".encode("latin-1"), "not UTF-8 text"),
    ],
)
def test_bad_manifests_raise_with_the_reason(tmp_path, name, content, message):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ManifestError, match=message):
        read_manifest(str(tmp_path / name))


def test_constructors_refuse_a_bare_string_or_nothing():
    with pytest.raises(TypeError, match="not a str"):
        ImageURIs("data/*.jpg")
    with pytest.raises(ValueError, match="must not be empty"):
        ImageURIs([])
    with pytest.raises(ValueError, match="must be non-empty strings"):
        ImageURIs(["data/*.jpg", " "])


# --- pipelines --------------------------------------------------------------------------------


def test_match_image_uris_pipeline(tree, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative patterns resolve against the launching directory
    uris, errors = run(
        tmp_path,
        lambda p: (
            p
            | ImageURIs(
                ["imgs", "imgs/*.jpg", "nope/*.png", "nosuch://bucket/*.jpg"],
                extensions=(".jpg", ".png", ".tif"),
            )
        ),
    )
    assert sorted(uris) == images(tree, "a.jpg", "b.png", "sub/deeper/e.tif")
    assert len(errors) == 2
    by_uri = {f.uri: f for f in errors}
    missing = str(tmp_path / "nope/*.png")
    assert by_uri[missing] == Failure(missing, "read", f"no files match {missing}")
    # An unknown scheme fails while listing: one error row, not a crashed pipeline.
    listing = by_uri["nosuch://bucket/*.jpg"]
    assert listing.stage == "read"
    assert listing.error.startswith("cannot list nosuch://bucket/*.jpg: ")


def test_image_uris_mines_each_uri_once(tree, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "m.txt").write_text(
        f"../imgs/a.jpg\n{tree}/a.jpg\nfile://{tree}/./b.png\n../imgs/nothere.jpg\n"
    )
    (lists / "m.csv").write_text("uri\n../imgs/sub/d.webp\n../imgs/a.jpg\n")
    pq.write_table(pa.table({"uri": ["../imgs/b.png", "../imgs/x/../c.JPEG"]}), lists / "m.parquet")
    (lists / "uris.lst").write_text("../imgs/sub/deeper/e.tif\n")
    inputs = [
        str(tree),
        f"{tree}/*.jpg",
        f"file://{tree}/a.jpg",
        str(lists / "m.txt"),
        str(lists / "m.csv"),
        str(lists / "m.parquet"),
        f"manifest:{lists / 'uris.lst'}",
        str(lists / "missing.csv"),
        f"{tmp_path}/nope/**",
    ]
    uris, errors = run(tmp_path, lambda p: p | ImageURIs(inputs))
    # Each file once, though most are named several times; the manifest's missing entry is
    # passed on (decoding reports files that are not there).
    assert len(uris) == len(set(uris))
    assert sorted(uris) == images(tree, *IMAGE_NAMES, "nothere.jpg")
    assert sorted((f.uri, f.stage) for f in errors) == [
        (str(lists / "missing.csv"), "read"),
        (f"{tmp_path}/nope/**", "read"),
    ]
    assert all(f.error for f in errors)


def test_listing_on_the_launcher_finds_what_the_pipeline_finds(tree, tmp_path):
    # --commit_every lists the inputs before running: same URIs as ImageURIs, and the
    # inputs that yield nothing handed back for the pipeline to report.
    (tmp_path / "m.txt").write_text("imgs/a.jpg\nimgs/nothere.jpg\n")
    inputs = [
        f"{tree}/*.jpg",
        str(tree),
        str(tmp_path / "m.txt"),
        str(tmp_path / "missing.csv"),
        f"{tmp_path}/nope/**",
    ]
    uris, failed = list_image_uris(inputs)
    pipeline_uris, errors = run(tmp_path, lambda p: p | ImageURIs(inputs))
    assert uris == sorted(pipeline_uris) == images(tree, *IMAGE_NAMES, "nothere.jpg")
    assert sorted(failed) == sorted(f.uri for f in errors)
    assert sorted(failed) == sorted([str(tmp_path / "missing.csv"), f"{tmp_path}/nope/**"])


def test_read_manifest_pipeline_reports_a_bad_manifest(tree, tmp_path):
    (tmp_path / "m.csv").write_text("name\na.jpg\n")
    uris, errors = run(tmp_path, lambda p: p | ImageURIs([str(tmp_path / "m.csv")], column="uri"))
    assert uris == []
    assert errors == [
        Failure(
            str(tmp_path / "m.csv"),
            "read",
            f"manifest {tmp_path}/m.csv has no column 'uri' (columns: ['name'])",
        )
    ]


def test_outputs_index_by_name(tree, tmp_path):
    def build(p):
        out = p | ImageURIs([f"manifest:{tree / 'list.txt'}"])
        assert out["uris"] is out.uris and out["errors"] is out[1]
        with pytest.raises(KeyError, match="outputs are"):
            out["images"]
        return out

    (tree / "list.txt").write_text("a.jpg\na.jpg\n./a.jpg\n")
    uris, errors = run(tmp_path, build)
    assert (uris, errors) == ([str(tree / "a.jpg")], [])


def test_other_extensions_are_counted_and_extensionless_files_listed(tree, tmp_path, caplog):
    # notes.txt is skipped by the extension rule, counted and logged; an object named by
    # its hash (no extension) is listed and left to decoding to tell; every format the
    # decoder reads is listed by its own extension.
    Image.new("RGB", (4, 3)).save(tree / "3f9a0c", "PNG")
    for name, fmt in [("f.gif", "GIF"), ("g.jp2", "JPEG2000"), ("h.ppm", "PPM")]:
        Image.new("RGB", (4, 3)).save(tree / name, fmt)
    skipped: list[str] = []
    paths, reason = match_pattern(str(tree), IMAGE_EXTENSIONS, skipped)
    assert reason is None
    assert paths == images(tree, *IMAGE_NAMES, "3f9a0c", "f.gif", "g.jp2", "h.ppm")
    assert skipped == [str(tree / "notes.txt")]
    with beam.Pipeline(runner=FnApiRunner()) as p:
        _ = p | ImageURIs([str(tree)])
    counters = p.result.metrics().query(MetricsFilter().with_name("files_skipped_by_extension"))
    assert [c.committed for c in counters["counters"]] == [1]
    assert "1 file(s) skipped by --extensions, e.g. " + str(tree / "notes.txt") in caplog.text


def test_extensions_flag_narrows_the_listing_and_is_checked(tree, tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.config import options_extensions
    from pipeline.options import MaskMineOptions

    options = MaskMineOptions(["--extensions=.PNG, .webp"])
    assert options_extensions(options) == (".png", ".webp")
    paths, _ = match_pattern(str(tree), options_extensions(options))
    assert paths == images(tree, "b.png", "sub/d.webp")
    assert main([f"--output={tmp_path / 'out'}", "--extensions=png"]) == 2
    assert "--extensions 'png': give a comma-separated list" in capsys.readouterr().err


def test_local_globs_take_backslashes_and_glob_escaped_folders(tmp_path):
    # Beam's "*" stops at "\" (a separator on Windows only): back\slash.png was lost.
    folder = tmp_path / "out[1]"
    folder.mkdir()
    for name in ("back\\slash.png", "plain.png", "skip.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "deeper.png").write_bytes(b"x")
    from schemas.layout import glob_escape

    paths, reason = match_pattern(glob_escape(str(folder)) + "/*.png", IMAGE_EXTENSIONS)
    assert reason is None
    assert paths == images(folder, "back\\slash.png", "plain.png")
    paths, _ = match_pattern(glob_escape(str(folder)) + "/**.png", IMAGE_EXTENSIONS)
    assert paths == images(folder, "back\\slash.png", "plain.png", "sub/deeper.png")
    paths, _ = match_pattern(str(tmp_path) + "/out?1]/p*", IMAGE_EXTENSIONS)
    assert paths == images(folder, "plain.png")  # "?" takes the "[", "1]" is literal
    assert match_pattern(str(tmp_path) + "/out[![]1]/*", IMAGE_EXTENSIONS)[0] == []
    assert match_pattern(str(tmp_path) + "/out[[]1]/p*", IMAGE_EXTENSIONS)[0] == images(
        folder, "plain.png"
    )


def test_a_folder_that_cannot_be_read_is_an_error_not_a_silent_gap(tmp_path):
    # os.walk (Beam's listing) skips a folder it cannot read without a word.
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads every folder")
    locked = tmp_path / "imgs" / "locked"
    locked.mkdir(parents=True)
    (locked / "a.png").write_bytes(b"x")
    (tmp_path / "imgs" / "b.png").write_bytes(b"x")
    locked.chmod(0)
    try:
        problems: list = []
        paths, reason = match_pattern(str(tmp_path / "imgs"), IMAGE_EXTENSIONS, None, problems)
    finally:
        locked.chmod(0o755)
    assert (paths, reason) == ([str(tmp_path / "imgs" / "b.png")], None)
    assert problems == [(str(locked), "cannot list folder: permission denied")]


def test_an_entry_that_cannot_be_mined_is_one_error_row_however_often_listed(tmp_path):
    # Two inputs list the same link to an enclosing folder: one row, as one URI is mined once.
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a.png").write_bytes(b"x")
    (root / "up").symlink_to(root, target_is_directory=True)
    uris, errors = run(tmp_path, lambda p: p | ImageURIs([str(root), f"{root}/**", f"{root}/"]))
    assert uris == [str(root / "a.png")]
    assert [(e.uri, e.stage) for e in errors] == [(str(root / "up"), "read")]
    assert "symbolic link loop" in errors[0].error
